"""Which tapped messages to show: NATS subject wildcards and CloudEvents attributes."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from ordermesh.tap.message import Tapped


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    pattern_tokens = pattern.split(".")
    tokens = subject.split(".")
    for i, p in enumerate(pattern_tokens):
        if p == ">":
            return len(tokens) > i
        if i >= len(tokens) or (p != "*" and p != tokens[i]):
            return False
    return len(tokens) == len(pattern_tokens)


@dataclass(frozen=True)
class Filter:
    types: Sequence[str] = ()
    """Shell-style patterns on the message type (``order.*``, ``*.placed``)."""
    correlation: str | None = None
    trace: str | None = None
    """A trace id, or a prefix of one."""
    exclude: Sequence[str] = field(default_factory=tuple)
    """Subjects (with NATS wildcards) never to show."""
    subjects: Sequence[str] = ()
    """When set, only these subjects (for a replay, which reads a whole stream)."""

    def __call__(self, msg: Tapped) -> bool:
        if self.subjects and not any(subject_matches(p, msg.subject) for p in self.subjects):
            return False
        if any(subject_matches(p, msg.subject) for p in self.exclude):
            return False
        if self.types and not any(fnmatch.fnmatchcase(msg.type, t) for t in self.types):
            return False
        if self.correlation is not None and msg.correlation_id != self.correlation:
            return False
        if self.trace is not None:
            trace_id = msg.trace_id
            if trace_id is None or not trace_id.startswith(self.trace.lower()):
                return False
        return True
