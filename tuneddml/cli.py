"""Shared command-line plumbing: KEY=VALUE overrides, exit code 2 on bad input, progress lines."""

from __future__ import annotations

import re
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
        if key.strip() in out:
            raise ConfigError(key.strip(), item, f"one setting per key (it is also {key.strip()}={out[key.strip()]})")
        out[key.strip()] = _number_or_text(value.strip())
    return out


class DuplicateKey(ValueError):
    """A mapping (YAML or JSON) names the same key twice: ``key`` and where (``line``, or 0)."""

    def __init__(self, key: Any, line: int = 0) -> None:
        self.key, self.line = key, line
        super().__init__(f"duplicate key {key!r}" + (f" (line {line})" if line else ""))


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a mapping naming a key twice, at any depth (PyYAML keeps the
    last one silently): raises :class:`DuplicateKey`."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base constructor reports it
                break
            if duplicate:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    Loader.construct_mapping = mapping  # type: ignore[method-assign]
    return yaml.load(text, Loader=Loader)  # a SafeLoader subclass


def load_json(text: str) -> Any:
    """``json.loads`` that refuses an object naming a key twice: raises :class:`DuplicateKey`."""
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise DuplicateKey(key)
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs)


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the message holds
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


_ROLE = re.compile(r":[a-z]+:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")  # :class:`~a.B`, :func:`text <target>`
_ABBREVIATIONS = ("e.g.", "i.e.", "al.", "vs.", "cf.", "approx.")


def plain(text: str) -> str:
    """Docstring text as a person reads it: reST roles unwrapped (``:class:`~a.B``` -> ``B``),
    literals in single quotes (````code```` -> ``'code'``), line breaks and runs of spaces as one."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2)
        return target.rsplit(".", 1)[-1] if match.group(1) else target

    text = _ROLE.sub(role, text)
    text = re.sub(r"``(.+?)``", r"'\1'", text, flags=re.S)
    return " ".join(text.split())


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph, plain (see :func:`plain`)."""
    return plain((doc or "").strip().split("\n\n", 1)[0])


def first_sentence(text: str) -> str:
    """The first whole sentence of plain ``text``: up to the first full stop followed by a capital
    (``e.g.``, ``et al.`` and the like are not ends); all of ``text`` if it has one sentence."""
    for match in re.finditer(r"[.!?](?=\s+[A-Z(\"'])", text):
        word = text[: match.end()].rsplit(None, 1)[-1]
        if word.lower() not in _ABBREVIATIONS:
            return text[: match.end()]
    return text
