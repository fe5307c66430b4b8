"""The input pipeline of file-backed sets (tuneddml.data.loader) and the image views it decodes.

Worker processes cost a start-up each, so the tests that start them are few: one pipeline shared
by the module (``pool``) and one pair of trainers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tuneddml.config import TrialConfig
from tuneddml.data import DATASETS
from tuneddml.data.base import ArrayItems
from tuneddml.data.files import FileItems
from tuneddml.data.loader import InputPipeline, default_workers, trial_cpus
from tuneddml.data.transforms import (
    CROP_AREA,
    CROP_RATIO,
    augment,
    crop_box,
    eval_view,
    open_rgb,
    resize_size,
    train_view,
)
from tuneddml.errors import ConfigError
from tuneddml.sampling.m_per_class import MPerClass
from tuneddml.training import Trainer

CPU = torch.device("cpu")


def _gradient(width: int, height: int) -> Image.Image:
    """Red grows left to right, green top to bottom: any shift of a crop changes its pixels."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], -1).round().astype(np.uint8))


def _write_folder(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``classes`` class folders of ``per_class`` 40x30 images, JPEG and PNG alternating."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("photos"))


class _Fixed:
    """A stand-in generator whose ``random(5)`` is the given numbers."""

    def __init__(self, u: list[float]) -> None:
        self.u = np.array(u)

    def random(self, n: int) -> np.ndarray:
        assert n == 5
        return self.u


# -- the views -----------------------------------------------------------------------------------
def test_eval_view_resizes_the_shorter_side_then_centre_crops(tmp_path):
    _gradient(80, 60).save(tmp_path / "g.png")
    size = 28
    side = resize_size(size)
    assert side == 32 and resize_size(224) == 256
    # independently: 80x60 -> 43x32 (shorter side 32), centre crop 28x28 at (7, 2)
    reference = np.asarray(_gradient(80, 60).resize((43, 32), Image.Resampling.BILINEAR).crop((7, 2, 35, 30)))
    view = eval_view(tmp_path / "g.png", size)
    assert view.shape == (28, 28, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(view, reference)
    # a tall image: the crop is centred vertically
    _gradient(30, 50).save(tmp_path / "tall.png")
    tall = np.asarray(_gradient(30, 50).resize((32, 53), Image.Resampling.BILINEAR).crop((2, 12, 30, 40)))
    np.testing.assert_array_equal(eval_view(tmp_path / "tall.png", size), tall)


def test_a_trials_resize_size_replaces_the_256_224_rule(tmp_path):
    _gradient(80, 60).save(tmp_path / "g.png")
    # resize 40 instead of resize_size(28) = 32: 80x60 -> 53x40, centre crop 28x28 at (12, 6)
    reference = np.asarray(_gradient(80, 60).resize((53, 40), Image.Resampling.BILINEAR).crop((12, 6, 40, 34)))
    items = FileItems([tmp_path / "g.png"], np.zeros(1), 28).resized(40)
    np.testing.assert_array_equal(items.view(0), reference)
    np.testing.assert_array_equal(items.subset(np.array([0])).view(0), reference)  # a fold keeps it
    assert not np.array_equal(FileItems([tmp_path / "g.png"], np.zeros(1), 28).view(0), reference)
    with pytest.raises(ConfigError) as info:  # a crop larger than the resized image
        TrialConfig.from_flat({"dataset": "cub200", "image_size": 227, "resize_size": 200})
    assert info.value.field == "resize_size" and "227" in info.value.expected


def test_train_view_crops_the_resized_image_to_the_train_size_and_flips(tmp_path):
    _gradient(80, 60).save(tmp_path / "g.png")
    resized = _gradient(80, 60).resize((43, 32), Image.Resampling.BILINEAR)  # decoded at resize 32
    # the whole-area square crop (ratio 1): sqrt(43 * 32) wide, clipped to the height; at the left
    u = [1.0, 0.5, 0.0, 0.0, 0.9]
    w = math.sqrt(43 * 32)
    expected = np.asarray(resized.resize((28, 28), Image.Resampling.BILINEAR, box=(0, 0, w, 32)))
    view = train_view(tmp_path / "g.png", 28, _Fixed(u))  # type: ignore[arg-type]
    assert view.shape == (28, 28, 3)
    np.testing.assert_array_equal(view, expected)
    # at the right edge, and flipped (fifth number < 1/2)
    right = resized.resize((28, 28), Image.Resampling.BILINEAR, box=(43 - w, 0, 43, 32))
    flipped = train_view(tmp_path / "g.png", 28, _Fixed([1.0, 0.5, 1.0, 0.0, 0.1]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(flipped, np.asarray(right.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))


def test_crop_boxes_keep_the_area_and_ratio_ranges_inside_the_image():
    rng = np.random.default_rng(1)
    for _ in range(300):
        left, top, right, bottom = crop_box(64, 48, rng.random(4))
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 64 + 1e-9 and bottom <= 48 + 1e-9
        assert 0 < w * h <= 64 * 48 + 1e-6
        if w < 64 and h < 48:  # not clipped: the drawn area and ratio exactly
            assert CROP_AREA[0] * 64 * 48 - 1e-6 <= w * h and CROP_RATIO[0] - 1e-9 <= w / h <= CROP_RATIO[1] + 1e-9


def test_jpegs_are_decoded_at_a_reduced_scale_still_covering_the_resize_side(tmp_path):
    _gradient(400, 300).save(tmp_path / "big.jpg", quality=90)
    assert open_rgb(tmp_path / "big.jpg", 32).size == (50, 38)  # DCT scale 1/8, both sides >= 32
    assert open_rgb(tmp_path / "big.jpg", 256).size == (400, 300)  # 1/2 would give 200 < 256
    assert eval_view(tmp_path / "big.jpg", 28).shape == (28, 28, 3)


def test_a_datasets_own_image_size_applies_unless_the_trial_sets_one(folder):
    for flat, size in (({}, 224), ({"image_size": 20}, 20)):
        config = TrialConfig.from_flat({"dataset": "imagefolder", "data_root": str(folder), **flat})
        assert config.image_size == size
        data = DATASETS.build("imagefolder", {}, root=str(folder), image_size=config.image_size)
        pipeline = InputPipeline({"train": data.train}, augmentation="natural", seed=0, device=CPU, workers=0)
        _, x = next(pipeline.train([np.array([0, 1, 2])], 1, torch.Generator()))
        assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
        assert data.train.load(np.array([0])).shape == (1, 3, size, size)


# -- the pipeline --------------------------------------------------------------------------------
def _epoch(pipeline: InputPipeline, labels: np.ndarray, seed: int, epoch: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    batches = MPerClass(samples_per_class=2).batches(labels, 6, np.random.default_rng(seed))
    return [(i.copy(), x.clone()) for i, x in pipeline.train(batches, epoch, torch.Generator())]


@pytest.fixture(scope="module")
def pool(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """One pipeline with 2 worker processes over the folder's training part, plus a set whose
    second image is broken (its header is fine, its data truncated)."""
    data = DATASETS.build("imagefolder", {}, root=str(folder), image_size=16)
    broken_dir = tmp_path_factory.mktemp("broken")
    _gradient(40, 30).save(broken_dir / "good.jpg")
    (broken_dir / "bad.jpg").write_bytes((broken_dir / "good.jpg").read_bytes()[:200])
    broken = FileItems([broken_dir / "good.jpg", broken_dir / "bad.jpg"], np.array([0, 1]), 16)
    parts = {"train": data.train, "query": data.test, "gallery": broken}
    pipeline = InputPipeline(parts, augmentation="natural", seed=3, device=CPU, workers=2)
    yield data, pipeline, broken
    pipeline.close()


def test_two_workers_give_the_batches_of_zero_workers(pool):
    data, pipeline, _ = pool
    labels = data.train.labels
    serial = InputPipeline({"train": data.train}, augmentation="natural", seed=3, device=CPU, workers=0)
    threads = InputPipeline({"train": data.train}, augmentation="natural", seed=3, device=CPU, workers=2, in_order=True)
    for epoch in (1, 2):
        expected = _epoch(serial, labels, 5, epoch)
        for other in (pipeline, threads):
            got = _epoch(other, labels, 5, epoch)
            assert len(got) == len(expected) == len(labels) // 6
            for (i, x), (j, y) in zip(got, expected, strict=True):
                np.testing.assert_array_equal(i, j)
                assert torch.equal(x, y)
    assert pipeline._loader is not None and pipeline._loader.num_workers == 2  # the worker path ran
    assert threads._loader is None  # the in-order path never prefetches
    # another epoch, or another sampler seed, gives other crops / other batches
    first, second = _epoch(pipeline, labels, 5, 1), _epoch(pipeline, labels, 5, 2)
    assert not torch.equal(first[0][1], second[0][1])
    assert not np.array_equal(_epoch(pipeline, labels, 6, 1)[0][0], first[0][0])
    other_seed = InputPipeline({"train": data.train}, augmentation="natural", seed=4, device=CPU, workers=0)
    assert not torch.equal(_epoch(other_seed, labels, 5, 1)[0][1], first[0][1])


def test_evaluation_batches_are_the_eval_views_in_order(pool):
    data, pipeline, _ = pool
    order = np.array([5, 0, 3, 1, 2, 4, 6, 7, 8, 9, 10])
    batches = list(pipeline.eval(data.test, order, 4))
    assert [len(b) for b in batches] == [4, 4, 3]
    assert torch.equal(torch.cat(batches), data.test.load(order))


def test_an_unreadable_image_in_a_worker_is_a_config_error_naming_it(pool):
    _, pipeline, broken = pool
    with pytest.raises(ConfigError) as err:
        list(pipeline.eval(broken, np.arange(2), 2))
    assert err.value.field == "data_root" and "bad.jpg" in str(err.value.value)
    assert len(list(pipeline.eval(broken, np.arange(1), 2))) == 1  # the workers still serve


def test_in_memory_items_keep_their_batches_and_augmentation():
    rng = np.random.default_rng(0)
    items = ArrayItems((rng.random((12, 1, 8, 8)) * 255).astype(np.uint8), np.repeat(np.arange(6), 2))
    pipeline = InputPipeline({"train": items}, augmentation="glyph", seed=0, device=CPU, workers=4)
    assert pipeline.workers == 0
    batches = [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])]
    got = list(pipeline.train(batches, 1, torch.Generator().manual_seed(9)))
    generator = torch.Generator().manual_seed(9)
    for (i, x), b in zip(got, batches, strict=True):
        assert i is b and torch.equal(x, augment(items.load(b), "glyph", generator))


def test_default_workers():
    assert default_workers(False, None) == 0 and default_workers(False, 16) == 0
    assert default_workers(True, 1) == 0 and default_workers(True, 3) == 2 and default_workers(True, 64) == 8
    assert default_workers(True, None) == max(0, min(8, trial_cpus(None) - 1))
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"workers": -1})
    assert err.value.field == "workers"


# -- the trainer ---------------------------------------------------------------------------------
def test_a_trainer_gives_the_same_run_with_workers_and_after_a_resume(folder, tmp_path):
    flat = {
        "dataset": "imagefolder",
        "data_root": str(folder),
        "image_size": 16,
        "split": "test",
        "threads": 1,
        "epochs": 2,
        "batch_size": 6,
        "sampler.samples_per_class": 2,
        "eval_nmi": False,
        "eval_ap": False,
    }

    def outcome(trainer: Trainer) -> list:
        result = trainer.run()
        return [(r.terms, r.metrics) for r in result.history]

    serial = outcome(Trainer(TrialConfig.from_flat({**flat, "workers": 0})))
    with_workers = Trainer(TrialConfig.from_flat({**flat, "workers": 2}))
    assert outcome(with_workers) == serial
    assert with_workers.inputs._loader is not None and not with_workers.inputs.in_order
    with_workers.inputs.close()
    # a sampler that reads the embeddings (observe) gets its batches in order, without look-ahead
    adaptive = Trainer(TrialConfig.from_flat({**flat, "workers": 2, "sampler": "class_representatives"}))
    assert adaptive.inputs.in_order
    # one epoch, a checkpoint, a new trainer that resumes: the uninterrupted run's numbers
    first = Trainer(TrialConfig.from_flat({**flat, "workers": 0, "epochs": 1}))
    first.run()
    first.save(tmp_path / "state.pt")
    resumed = Trainer(TrialConfig.from_flat({**flat, "workers": 0}))
    resumed.restore(tmp_path / "state.pt")
    assert outcome(resumed) == serial
    assert serial[0] != serial[1]  # the epochs differ: the check is not vacuous
