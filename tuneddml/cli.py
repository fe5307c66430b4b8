"""Shared command-line plumbing: KEY=VALUE overrides, exit code 2 on bad input, progress lines."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tuneddml.errors import ConfigError

EXIT_BAD_INPUT = 2


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["loss=supcon", "loss.lambda=0.3"]`` -> ``{"loss": "supcon", "loss.lambda": 0.3}``.

    Numbers become ints or floats; everything else stays a string (the config coerces it)."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError("argument", item, "KEY=VALUE, e.g. loss=supcon or loss.lambda=0.3")
        out[key.strip()] = _number_or_text(value.strip())
    return out


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def guarded(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Run ``main``; a :class:`ConfigError` ends it with one line on stderr and exit code 2."""

    def run(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except ConfigError as exc:
            fail(str(exc))

    return run


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_values(values: dict[str, Any], keys: Sequence[str] | None = None, digits: int = 4) -> str:
    keys = list(values) if keys is None else [k for k in keys if k in values]
    return " ".join(
        f"{k}={values[k]:.{digits}g}" if isinstance(values[k], float) else f"{k}={values[k]}" for k in keys
    )
