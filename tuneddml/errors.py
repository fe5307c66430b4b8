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

    def __reduce__(self) -> tuple[Any, ...]:  # a trial's error crosses to the driver pickled
        return (type(self), (self.field, self.value, self.expected or None))


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite; the trial stops with this error, not a crash."""

    def __init__(self, epoch: int, step: int, terms: dict[str, float]) -> None:
        self.epoch = epoch
        self.step = step
        self.terms = terms
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        super().__init__(f"diverged at epoch {epoch} (step {step}): {shown}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.epoch, self.step, self.terms))


def error_message(exc: BaseException | None, fallback: str = "") -> str:
    """One line for an exception that may have crossed from a trial: the innermost cause's type
    and the first line of its message (Ray's ``RayTaskError`` wraps the trial's own as ``cause``).
    ``fallback``: a traceback text (Ray's error file), whose last line is used when ``exc`` is None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            break
        exc = cause
    if exc is None:
        lines = [line for line in fallback.splitlines() if line.strip() and not line[0].isspace()]
        return lines[-1][:500] if lines else "unknown error"
    name = type(exc).__name__
    for base in type(exc).__mro__:  # Ray's dynamic "RayTaskError(X)" class: show X
        if base.__module__ != "ray.exceptions" and issubclass(base, BaseException) and "(" not in base.__name__:
            name = base.__name__
            break
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{name}: {text}"[:500] if text else name
