"""Component blocks in a space file: each loss (or sampler, miner, ...) with its own parameters,
compiled into the conditional domains a space is made of, so no searcher sees anything new::

    parameters:
      loss:
        branches:                         # each loss, and the ranges of its own parameters
          supcon: {temperature: {loguniform: [0.01, 1.0], start: 0.1}}
          contrastive: own                # every range the loss declares (register(search=...))
          triplet: {margin: own}          # one declared range
          npair: {}                       # the loss alone
        start: supcon                     # optional (default: the first branch)
      # or: loss: {branches: every}       # every registered loss but an adapter's (pml:...), own ranges

compiles to::

      loss: {choice: [supcon, contrastive, triplet, npair], start: supcon}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5, when: {loss: contrastive}}
      ...

A parameter that several branches search with the same distribution is one domain whose ``when``
lists them all; different distributions are variants of the key. Inside a block, a ``when`` key
naming another parameter of the block means that parameter (``when: {weighting: fixed}`` ->
``loss.weighting``); a block's ``when`` (beside ``branches``) conditions the component itself.
Compiled keys come in order of first appearance, each after the keys its ``when`` names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tuneddml.errors import ConfigError

BLOCK_KEYS = ("branches", "start", "when")
EVERY = "every"
OWN = "own"


def is_block(spec: Any) -> bool:
    return isinstance(spec, Mapping) and "branches" in spec


def expand(parameters: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``parameters`` of a space file with every block compiled (other keys as written)."""
    out: dict[str, Any] = {}
    for key, spec in parameters.items():
        compiled = compile_block(key, spec, f"{where}: parameters.{key}") if is_block(spec) else {key: spec}
        for k, v in compiled.items():
            if k in out or (k != key and k in parameters):
                raise ConfigError(f"{where}: parameters.{k}", v, f"one entry per key (the branches of {key} search it)")
            out[k] = v
    return out


def compile_block(key: str, spec: Mapping[str, Any], field: str) -> dict[str, Any]:
    """One component block -> the component's choice domain and its branches' parameter domains."""
    from tuneddml.config import component_registries

    for k in spec:
        if k not in BLOCK_KEYS:
            raise ConfigError(f"{field}.{k}", spec[k], BLOCK_KEYS)
    registries = component_registries()
    if key not in registries:
        raise ConfigError(f"{field}.branches", spec["branches"], f"branches of a component: {', '.join(registries)}")
    registry = registries[key]
    branches = spec["branches"]
    if branches == EVERY:
        blocks: dict[str, Any] = {n: OWN for n in registry.names() if ":" not in n}
    elif isinstance(branches, Mapping) and branches:
        blocks = dict(branches)
    else:
        raise ConfigError(f"{field}.branches", branches, f"{EVERY}, or a mapping {{{key} name: its parameters}}")
    choice: dict[str, Any] = {"choice": list(blocks)}
    for k in ("start", "when"):
        if k in spec:
            choice[k] = spec[k]
    found: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
    for name, block in blocks.items():
        entry = registry.get(name, f"{field}.branches")
        for param, domain in _block(entry, block, f"{field}.branches.{name}").items():
            domain = dict(domain)
            inner = domain.pop("when", None) or {}
            if not isinstance(inner, Mapping):
                raise ConfigError(f"{field}.branches.{name}.{param}.when", inner, "a mapping {key: value or [values]}")
            when = {f"{key}.{k}" if k in block_keys(entry, block) else k: v for k, v in inner.items()}
            found.setdefault(f"{key}.{param}", []).append((name, domain, when))
    out: dict[str, Any] = {key: choice}
    for full in _ordered(found):
        variants: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {}
        for name, domain, when in found[full]:
            same = json.dumps([domain, when], sort_keys=True, default=str)
            variants.setdefault(same, ([], domain, when))[0].append(name)
        compiled = [
            {**domain, "when": {key: names[0] if len(names) == 1 else names, **when}}
            for names, domain, when in variants.values()
        ]
        out[full] = compiled[0] if len(compiled) == 1 else compiled
    return out


def block_keys(entry: Any, block: Any) -> set[str]:
    return set(_block(entry, block, "")) if block not in (None, {}) else set()


def _block(entry: Any, block: Any, field: str) -> dict[str, Any]:
    """A branch's parameters -> distributions, ``own`` ones read from what the component declares."""
    if block == OWN:
        return dict(entry.search)
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigError(field, block, f"{OWN}, or a mapping of its parameters to distributions")
    out = {}
    for param, domain in block.items():
        if domain == OWN:
            if param not in entry.search:
                declared = ", ".join(entry.search) or "none"
                raise ConfigError(f"{field}.{param}", OWN, f"a parameter with a declared range: {declared}")
            domain = entry.search[param]
        if not isinstance(domain, Mapping):
            raise ConfigError(f"{field}.{param}", domain, "a distribution such as {uniform: [0, 1]}, or own")
        out[param] = domain
    return out


def _ordered(found: Mapping[str, list[tuple[str, dict[str, Any], dict[str, Any]]]]) -> list[str]:
    """First-appearance order, each key moved after the compiled keys its ``when`` names."""
    order: list[str] = []

    def place(k: str, stack: tuple[str, ...] = ()) -> None:
        if k in order or k in stack:
            return
        for _, _, when in found[k]:
            for dep in when:
                if dep in found:
                    place(dep, (*stack, k))
        order.append(k)

    for k in found:
        place(k)
    return order
