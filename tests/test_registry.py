from __future__ import annotations

from typing import Literal

import pytest

from tuneddml.errors import ConfigError
from tuneddml.registry import Interval, Registry


def make_registry() -> Registry:
    registry: Registry = Registry("loss")

    @registry.register("toy", ranges={"lam": "[0, 1]", "temperature": "(0, inf)"}, runtime=("num_classes",))
    class Toy:
        """A toy component."""

        def __init__(
            self,
            *,
            num_classes: int,
            lam: float = 0.5,
            temperature: float = 0.1,
            aggregation: Literal["sum", "mean"] = "mean",
            proxies: int = 1,
            flag: bool = False,
        ) -> None:
            self.kwargs = dict(
                num_classes=num_classes,
                lam=lam,
                temperature=temperature,
                aggregation=aggregation,
                proxies=proxies,
                flag=flag,
            )

    return registry


def test_params_come_from_the_signature():
    entry = make_registry().get("toy")
    names = [p.name for p in entry.params]
    assert names == ["lambda", "temperature", "aggregation", "proxies", "flag"]  # lam shows as lambda
    assert entry.param("aggregation").choices == ("sum", "mean")
    assert entry.param("proxies").kind is int
    assert entry.summary == "A toy component."


def test_build_coerces_strings_and_injects_runtime_args():
    obj = make_registry().build(
        "toy", {"lambda": "0.25", "proxies": "3", "flag": "true"}, num_classes=7, extra=1
    )
    assert obj.kwargs == dict(
        num_classes=7, lam=0.25, temperature=0.1, aggregation="mean", proxies=3, flag=True
    )


@pytest.mark.parametrize(
    ("params", "field", "hint"),
    [
        ({"lambda": 1.5}, "loss.lambda", "[0, 1]"),
        ({"temperature": 0}, "loss.temperature", "(0, inf)"),
        ({"aggregation": "max"}, "loss.aggregation", "sum, mean"),
        ({"proxies": 2.5}, "loss.proxies", "int"),
        ({"flag": "maybe"}, "loss.flag", "bool"),
        ({"lamda": 0.3}, "loss.lamda", "lambda, temperature"),
    ],
)
def test_bad_params_name_field_and_choices(params, field, hint):
    with pytest.raises(ConfigError) as info:
        make_registry().build("toy", params, num_classes=2)
    assert info.value.field == field
    assert hint in str(info.value)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match="expected one of toy"):
        make_registry().get("nope")


def test_duplicates_and_hidden_kwargs_fail_loudly():
    registry = make_registry()
    with pytest.raises(ValueError, match="twice"):
        registry.register("toy")(type("Again", (), {"__init__": lambda self: None}))
    with pytest.raises(ValueError, match="kwargs"):

        @registry.register("hidden")
        class Hidden:
            def __init__(self, **kwargs):
                pass

    with pytest.raises(ValueError, match="unknown parameters"):

        @registry.register("ranged", ranges={"nope": "[0, 1]"})
        class Ranged:
            def __init__(self, *, x: float = 0.0):
                pass


def test_interval_parsing_and_membership():
    closed = Interval.parse("[0, 1]")
    assert 0 in closed and 1 in closed and 1.01 not in closed
    open_ = Interval.parse("(0, inf)")
    assert 0 not in open_ and 1e9 in open_ and float("nan") not in open_
    assert str(open_) == "(0, inf)"
