"""Registries: components are built by name, which is what search spaces need.

A component registers its class (or factory) under a name. Its searchable parameters are the
keyword arguments of its constructor: names, defaults and types come from the signature, choices
from ``Literal[...]`` annotations, ranges from the interval strings given to ``register``
(``"[0, 1]"``, ``"(0, inf)"``). Arguments listed as ``runtime`` (``num_classes``, an injected
miner, ...) are supplied by the trial, never by the user.

A runtime argument with a default (a dataset's ``image_size``) is described like a parameter
(:attr:`Entry.runtime_params`), so the trial can fill in the component's own default and check a
value against the component's own range. A component may also declare the ranges worth searching
(``search``: one space-file distribution per parameter, e.g. ``{"lambda": {"uniform": [0.05,
0.95]}}``), which search spaces reuse, and the Python packages it needs (``requires``).

Everything fails loudly: a duplicate name, an unknown name, an unknown parameter or a value out of
range raises :class:`~tuneddml.errors.ConfigError` naming the valid choices; a registry built with
a ``contract`` refuses, at import, a component that does not declare what its interface asks for.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import math
import pkgutil
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from tuneddml.errors import ConfigError

T = TypeVar("T")

# Config names that are Python keywords: the constructor argument is spelt differently.
_CONFIG_NAME = {"lam": "lambda"}
_ARG_NAME = {v: k for k, v in _CONFIG_NAME.items()}

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^\]\)]+?)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval, written as in maths: ``[0, 1]``, ``(0, inf)``."""

    low: float
    high: float
    low_closed: bool = True
    high_closed: bool = True

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _INTERVAL.match(text)
        if not match:
            raise ValueError(f"not an interval: {text!r}")
        left, low, high, right = match.groups()
        return cls(float(low), float(high), left == "[", right == "]")

    def __contains__(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def __str__(self) -> str:
        def fmt(x: float) -> str:
            return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:g}"

        left = "[" if self.low_closed else "("
        right = "]" if self.high_closed else ")"
        return f"{left}{fmt(self.low)}, {fmt(self.high)}{right}"


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable parameter of a registered component."""

    name: str  # as written in configs and search spaces
    arg: str  # the constructor's keyword
    default: Any
    kind: type  # float, int, bool or str
    choices: tuple[Any, ...] | None = None
    interval: Interval | None = None
    optional: bool = False  # None is allowed

    def describe(self) -> str:
        text = f"{self.name}: {self.kind.__name__} = {self.default!r}"
        if self.choices:
            text += f" (one of {', '.join(map(str, self.choices))})"
        if self.interval:
            text += f" in {self.interval}"
        return text

    def coerce(self, value: Any, field: str) -> Any:
        """Convert a value (possibly a command-line string) to the parameter's type and check it."""
        if value is None or (self.optional and isinstance(value, str) and value.lower() == "none"):
            if self.optional:
                return None
            raise ConfigError(field, value, self._expected())
        try:
            if self.kind is bool:
                value = _to_bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                if isinstance(value, bool):
                    raise ValueError
                value = int(value) if not isinstance(value, str) else int(value.strip())
            elif self.kind is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif self.kind is str:
                value = str(value)
        except (TypeError, ValueError):
            raise ConfigError(field, value, self._expected()) from None
        if self.choices is not None and value not in self.choices:
            raise ConfigError(field, value, self.choices)
        if self.interval is not None and value not in self.interval:
            raise ConfigError(field, value, f"a value in {self.interval}")
        return value

    def _expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        text = f"a {self.kind.__name__}"
        if self.interval:
            text += f" in {self.interval}"
        return text


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    params: tuple[ParamSpec, ...]
    runtime: tuple[str, ...]
    summary: str
    #: runtime arguments that have a default, described as parameters (their default and range)
    runtime_params: tuple[ParamSpec, ...] = ()
    #: parameter name -> the space-file distribution worth searching (see the module docstring)
    search: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    requires: tuple[str, ...] = ()  # importable modules the component needs

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def runtime_param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.runtime_params if p.name == name), None)


class Registry(Generic[T]):
    """Name -> component factory, with the parameters of each."""

    def __init__(self, kind: str, *, contract: Callable[[str, Any], None] | None = None) -> None:
        """``contract(name, factory)`` runs at registration and raises ValueError for a component
        that does not declare what its interface asks for (a loss's family, a miner's output)."""
        self.kind = kind
        self.contract = contract
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        ranges: Mapping[str, str] | None = None,
        runtime: Iterable[str] = (),
        summary: str | None = None,
        search: Mapping[str, Any] | None = None,
        requires: Iterable[str] = (),
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Class decorator. ``ranges`` maps constructor arguments (runtime ones with a default
        included) to interval strings; ``summary`` replaces the docstring's first line."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            where = f"{self.kind} {name}"
            if name in self._entries:
                raise ValueError(f"{where} is registered twice")
            if self.contract is not None:
                self.contract(name, factory)
            ranged = dict(ranges or {})
            runtime_args = tuple(runtime)
            runtime_ranges = {k: ranged.pop(k) for k in list(ranged) if k in runtime_args}
            params = param_specs(factory, ranged, runtime_args, where)
            defaults = runtime_specs(factory, runtime_args, runtime_ranges, where)
            searched = dict(search or {})
            unknown = sorted(set(searched) - {p.name for p in params})
            if unknown:
                raise ValueError(f"{where}: search ranges given for unknown parameters {unknown}")
            doc = inspect.getdoc(factory) or ""
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            self._entries[name] = Entry(
                name, factory, params, runtime_args, summary or first, defaults, searched, tuple(requires)
            )
            return factory

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests register tiny components and take them back)."""
        self.get(name)
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        """Names in registration order."""
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, field: str | None = None) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(field or self.kind, name, self.names())
        return self._entries[name]

    def available(self, name: str, field: str | None = None) -> Entry[T]:
        """:meth:`get`, and a ConfigError if a package the component ``requires`` is missing."""
        entry = self.get(name, field)
        missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
        if missing:
            others = ", ".join(n for n in self.names() if n != name)
            raise ConfigError(
                field or self.kind,
                name,
                f"an installed {', '.join(missing)} package (pip install {' '.join(missing)}), or one of {others}",
            )
        return entry

    def validate(self, name: str, params: Mapping[str, Any], field: str | None = None) -> dict[str, Any]:
        """Check ``params`` against the component's signature; return them typed, defaults filled."""
        field = field or self.kind
        entry = self.get(name, field)
        known = {p.name: p for p in entry.params}
        for key in params:
            if key not in known:
                valid = ", ".join(known) or "none"
                supplied = " (the trial supplies " + key + ")" if key in entry.runtime else ""
                raise ConfigError(
                    f"{field}.{key}", params[key], f"a parameter of {self.kind} {name!r}: {valid}{supplied}"
                )
        out: dict[str, Any] = {}
        for spec in entry.params:
            if spec.name in params:
                out[spec.name] = spec.coerce(params[spec.name], f"{field}.{spec.name}")
            else:
                out[spec.name] = spec.default
        return out

    def build(
        self, name: str, params: Mapping[str, Any] | None = None, field: str | None = None, **runtime: Any
    ) -> T:
        """Validate ``params`` and construct; runtime arguments go only where the factory takes them."""
        entry = self.available(name, field)
        checked = self.validate(name, params or {}, field)
        kwargs = {_ARG_NAME.get(k, k): v for k, v in checked.items()}
        kwargs.update({k: v for k, v in runtime.items() if k in entry.runtime})
        return entry.factory(**kwargs)


def import_components(package: str, skip: Iterable[str] = ()) -> None:
    """Import every module of ``package`` (not ``_private`` ones, not ``base``, not ``skip``), so
    that each component registers itself: a new module needs no entry anywhere."""
    skipped = {"base", *skip}
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not module.name.startswith("_") and module.name not in skipped:
            importlib.import_module(f"{package}.{module.name}")


def param_specs(
    factory: Callable[..., Any], ranges: dict[str, str], runtime: tuple[str, ...], where: str
) -> tuple[ParamSpec, ...]:
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    if target is object.__init__:  # a class without a constructor of its own takes no parameters
        return ()
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that cannot be resolved: fall back to the defaults' types
        hints = {}
    specs = []
    seen = set()
    for arg, p in signature.parameters.items():
        if arg == "self" or arg in runtime or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ValueError(f"{where}: *args/**kwargs would hide parameters; spell them out")
            continue
        if p.default is inspect.Parameter.empty:
            raise ValueError(f"{where}: parameter {arg!r} needs a default or must be listed as runtime")
        kind, choices, optional = _kind_of(hints.get(arg), p.default)
        interval = Interval.parse(ranges.pop(arg)) if arg in ranges else None
        specs.append(ParamSpec(_CONFIG_NAME.get(arg, arg), arg, p.default, kind, choices, interval, optional))
        seen.add(arg)
    if ranges:
        raise ValueError(f"{where}: ranges given for unknown parameters {sorted(ranges)}")
    return tuple(specs)


def runtime_specs(
    factory: Callable[..., Any], runtime: tuple[str, ...], ranges: dict[str, str], where: str
) -> tuple[ParamSpec, ...]:
    """Specs of the runtime arguments that have a default of a plain type (bool, int, float, str)."""
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    if target is object.__init__:
        return ()
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    specs = []
    for arg in runtime:
        p = signature.parameters.get(arg)
        if p is None or p.default is inspect.Parameter.empty:
            if arg in ranges:
                raise ValueError(f"{where}: a range for runtime argument {arg!r}, which has no default")
            continue
        hint = hints.get(arg)
        plain = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
        if not any(h in (bool, int, float, str) or typing.get_origin(h) is Literal for h in plain):
            continue  # an object (a searcher's options, a miner): not described as a parameter
        kind, choices, optional = _kind_of(hint, p.default)
        interval = Interval.parse(ranges.pop(arg)) if arg in ranges else None
        specs.append(ParamSpec(arg, arg, p.default, kind, choices, interval, optional))
    if ranges:
        raise ValueError(f"{where}: ranges given for unknown runtime arguments {sorted(ranges)}")
    return tuple(specs)


_UNIONS = (typing.Union, getattr(__import__("types"), "UnionType", None))


def _kind_of(hint: Any, default: Any) -> tuple[type, tuple[Any, ...] | None, bool]:
    optional = False
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return type(args[0]), tuple(args), optional
    if hint in (bool, int, float, str):
        return hint, None, optional
    if default is not None:
        return type(default), None, optional
    return str, None, True
