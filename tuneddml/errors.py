"""Errors that reach the user.

Every bad input ends in a :class:`ConfigError`: the command-line entry points print its one-line
message and exit with code 2 before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A bad input: names the field, the bad value and (where known) the valid choices."""

    def __init__(self, field: str, value: Any, expected: str | Iterable[Any] | None = None) -> None:
        self.field = field
        self.value = value
        if expected is None:
            self.expected = ""
        elif isinstance(expected, str):
            self.expected = expected
        else:
            self.expected = "one of " + ", ".join(str(c) for c in expected)
        message = f"{field}: bad value {value!r}"
        if self.expected:
            message += f" (expected {self.expected})"
        super().__init__(message)


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial stops with this error, not a crash."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        self.epoch = epoch
        self.step = step
        self.terms = terms
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        super().__init__(f"diverged at epoch {epoch} (step {step}): {shown}")
