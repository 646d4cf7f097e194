"""How long each saga step may take, and how it is retried.

Set from the environment, e.g. ``ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT=5``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StepPolicy(BaseModel):
    """``timeout`` bounds the whole step (persisted as a deadline when the step starts);
    each attempt waits at most ``attempt_timeout`` for its reply, so a request lost with
    a crashed service is retried long before the step gives up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: float = Field(gt=0)
    attempt_timeout: float = Field(gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff: float = Field(default=0.2, ge=0)
    backoff_max: float = Field(default=5.0, ge=0)

    def delay(self, attempt: int) -> float:
        """Wait before ``attempt`` (1-based): none before the first, then doubling."""
        if attempt <= 1:
            return 0.0
        return float(min(self.backoff * 2 ** (attempt - 2), self.backoff_max))


class CompensationPolicy(BaseModel):
    """Compensations retry until they succeed: every one is idempotent, and giving up
    would leave stock held or money taken for a cancelled order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempt_timeout: float = Field(default=10.0, gt=0)
    backoff: float = Field(default=0.2, ge=0)
    backoff_max: float = Field(default=5.0, ge=0)

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** max(attempt - 1, 0), self.backoff_max))


#: Each step's own defaults; a setting given for a step overrides just that field.
STEP_DEFAULTS: dict[str, dict[str, float]] = {
    "reserve_inventory": {"timeout": 30, "attempt_timeout": 10},
    "process_payment": {"timeout": 60, "attempt_timeout": 20},
    "arrange_shipping": {"timeout": 45, "attempt_timeout": 15},
    "confirm_order": {"timeout": 10, "attempt_timeout": 5},
}


class SagaPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reserve_inventory: StepPolicy = StepPolicy(**STEP_DEFAULTS["reserve_inventory"])
    process_payment: StepPolicy = StepPolicy(**STEP_DEFAULTS["process_payment"])
    arrange_shipping: StepPolicy = StepPolicy(**STEP_DEFAULTS["arrange_shipping"])
    confirm_order: StepPolicy = StepPolicy(**STEP_DEFAULTS["confirm_order"])
    compensation: CompensationPolicy = CompensationPolicy()

    @model_validator(mode="before")
    @classmethod
    def _fill_step_defaults(cls, data: Any) -> Any:
        """``ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT=5`` alone keeps the step's other
        defaults, instead of failing for want of its attempt timeout."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for step, defaults in STEP_DEFAULTS.items():
            given = merged.get(step)
            if isinstance(given, dict):
                merged[step] = defaults | given
        return merged

    def step(self, name: str) -> StepPolicy:
        policy = getattr(self, name)
        assert isinstance(policy, StepPolicy), name
        return policy
