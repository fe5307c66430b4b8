"""The dataset contract, over the registry: every loader takes ``root`` and ``image_size`` from the
trial and has its own default image size, which a trial gets unless it sets one."""

from __future__ import annotations

import pytest

from tuneddml.config import TrialConfig
from tuneddml.data import DATASETS, RUNTIME
from tuneddml.errors import ConfigError


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_declares_root_and_its_own_image_size(name):
    entry = DATASETS.get(name)
    assert set(RUNTIME) <= set(entry.runtime)
    size = entry.runtime_param("image_size")
    assert size is not None and isinstance(size.default, int) and size.interval is not None
    assert {p.name for p in entry.params}.isdisjoint(RUNTIME)  # never a dataset.<param>
    config = TrialConfig.from_flat({"dataset": name})
    assert config.image_size == size.default


def test_the_glyphs_keep_32_pixels_and_the_photo_benchmarks_get_224():
    for name in ("glyphs", "glyphs-tiny", "glyphs-xl"):
        assert TrialConfig.from_flat({"dataset": name}).image_size == 32
    for name in ("cub200", "cars196", "sop", "inshop"):
        assert TrialConfig.from_flat({"dataset": name}).image_size == 224
    assert TrialConfig.from_flat({"dataset": "cub200", "image_size": 96}).image_size == 96


def test_a_new_dataset_gets_its_own_size_unless_the_size_is_given():
    glyphs = TrialConfig.from_flat({"dataset": "glyphs"})
    assert glyphs.replace(dataset="cub200").image_size == 224
    assert glyphs.replace(dataset="cub200", image_size=64).image_size == 64
    assert glyphs.replace(epochs=2).image_size == 32
    assert TrialConfig.from_flat(glyphs.to_flat()) == glyphs


def test_an_image_size_out_of_the_datasets_range_names_the_field():
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({"dataset": "glyphs", "image_size": 600})
    assert info.value.field == "image_size" and "[8, 512]" in info.value.expected
    with pytest.raises(ConfigError) as info:
        TrialConfig.from_flat({"dataset.image_size": 64})
    assert info.value.field == "dataset.image_size" and "top-level key image_size" in info.value.expected


def test_a_loader_without_the_runtime_arguments_is_refused_at_registration():
    def loader(*, path: str = "") -> None:
        """Takes neither root nor image_size."""

    with pytest.raises(ValueError, match="root and image_size"):
        DATASETS.register("no_root_probe")(loader)
