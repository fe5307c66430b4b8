"""Component blocks in space files: each loss with its own parameters, compiled into the same
conditional domains a space written parameter by parameter has (so searchers see nothing new)."""

from __future__ import annotations

import pytest
from searcher_helpers import space_from_text

from tuneddml.errors import ConfigError
from tuneddml.losses import LOSSES

BLOCKS = """
    parameters:
      loss:
        branches:
          supcon: {lambda: own, temperature: {loguniform: [0.01, 1.0], start: 0.1}}
          contrastive: {lambda: own, pos_margin: {uniform: [0.5, 1.0], start: 0.8}}
          triplet: {}
        start: contrastive
      batch_size: {choice: [32, 64]}
"""

WRITTEN = """
    parameters:
      loss: {choice: [supcon, contrastive, triplet], start: contrastive}
      loss.lambda: {uniform: [0.05, 0.95], start: 0.5, when: {loss: [supcon, contrastive]}}
      loss.temperature: {loguniform: [0.01, 1.0], start: 0.1, when: {loss: supcon}}
      loss.pos_margin: {uniform: [0.5, 1.0], start: 0.8, when: {loss: contrastive}}
      batch_size: {choice: [32, 64]}
"""


def _domains(space):
    return [(d.key, d.name, d.kind, d.low, d.high, d.log, d.choices, d.start, d.when) for d in space.domains]


def test_a_block_compiles_to_the_conditional_domains_written_by_hand(tmp_path):
    compiled = space_from_text(tmp_path, BLOCKS, name="blocks")
    written = space_from_text(tmp_path, WRITTEN, name="written")
    assert _domains(compiled) == _domains(written)


def test_own_ranges_are_the_losses_declared_ones(tmp_path):
    space = space_from_text(tmp_path, "parameters:\n  loss: {branches: {supcon: own, margin: own}}\n")
    for loss in ("supcon", "margin"):
        for param, declared in LOSSES.get(loss).search.items():
            (domain,) = [d for d in space.parameters[f"loss.{param}"] if loss in dict(d.when)["loss"]]
            kind = next(k for k in ("uniform", "loguniform", "int", "choice") if k in declared)
            assert domain.kind == kind, (loss, param)


def test_every_takes_each_registered_loss_but_the_adapters(tmp_path):
    space = space_from_text(tmp_path, "parameters:\n  loss: {branches: every, start: supcon}\n")
    (loss,) = space.parameters["loss"]
    assert set(loss.choices) == {n for n in LOSSES.names() if ":" not in n} and loss.start == "supcon"
    (momentum,) = space.parameters["loss.momentum"]  # lsd's, conditional on its sibling teacher
    assert dict(momentum.when) == {"loss": ("lsd",), "loss.teacher": ("ema",)}
    names = [d.key for d in space.domains]
    assert names.index("loss.weighting") < names.index("loss.lambda")  # hybrid's lambda needs it


def test_except_takes_every_other_choice(tmp_path):
    space = space_from_text(
        tmp_path,
        "parameters:\n  loss: {choice: [supcon, npair, triplet]}\n"
        "  sampler: {choice: [m_per_class, random], when: {loss: {except: [npair]}}}\n",
    )
    (sampler,) = space.parameters["sampler"]
    assert dict(sampler.when) == {"loss": ("supcon", "triplet")}


@pytest.mark.parametrize(
    ("parameters", "field", "expected"),
    [
        ("  loss: {branches: {nosuch: {}}}\n", "parameters.loss.branches", "supcon"),
        ("  loss: {branches: {triplet: {lambda: own}}}\n", "parameters.loss.branches.triplet.lambda", "margin"),
        ("  lr: {branches: every}\n", "parameters.lr.branches", "loss"),
        ("  loss: {branches: every, bad: 1}\n", "parameters.loss.bad", "branches"),
        (
            "  loss: {branches: {supcon: own}}\n  loss.temperature: {uniform: [0.1, 0.2]}\n",
            "parameters.loss.temperature",
            "branches of loss",
        ),
        (
            "  loss: {choice: [supcon]}\n  lr: {uniform: [0.1, 0.2], when: {loss: {except: [nope]}}}\n",
            "parameters.lr.when.loss.except",
            "supcon",
        ),
    ],
)
def test_bad_blocks_name_the_file_and_the_key(tmp_path, parameters, field, expected):
    with pytest.raises(ConfigError) as info:
        space_from_text(tmp_path, "parameters:\n" + parameters)
    assert info.value.field == f"{tmp_path / 'x.yaml'}: {field}"
    assert expected in info.value.expected


def test_a_parameter_name_means_one_kind_of_value_in_every_loss():
    """``loss.base`` was a float (multi_similarity) and a loss name (ccp, lsd); a key of a space
    must not change type with the loss."""
    kinds: dict[str, set[str]] = {}
    for name in LOSSES.names():
        if ":" not in name:
            for p in LOSSES.get(name).params:
                kinds.setdefault(p.name, set()).add(p.kind.__name__)
    assert {k: v for k, v in kinds.items() if len(v) > 1} == {}


@pytest.mark.parametrize("name", [n for n in LOSSES.names() if LOSSES.get(n).search])
def test_every_declared_range_validates_with_the_trial_config(tmp_path, name):
    space_from_text(tmp_path, f"parameters:\n  loss: {{branches: {{{name}: own}}}}\n", validate=None)
