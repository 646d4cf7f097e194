"""How long each saga step may take, and how it is retried.

Set from the environment, e.g. ``ORDERMESH_SAGA__PROCESS_PAYMENT__TIMEOUT=5``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


class SagaPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    reserve_inventory: StepPolicy = StepPolicy(timeout=30, attempt_timeout=10)
    process_payment: StepPolicy = StepPolicy(timeout=60, attempt_timeout=20)
    arrange_shipping: StepPolicy = StepPolicy(timeout=45, attempt_timeout=15)
    confirm_order: StepPolicy = StepPolicy(timeout=10, attempt_timeout=5)
    compensation: CompensationPolicy = CompensationPolicy()

    def step(self, name: str) -> StepPolicy:
        policy = getattr(self, name)
        assert isinstance(policy, StepPolicy), name
        return policy
