from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tuneddml.data import DATASETS
from tuneddml.data.fonts import ALNUM, FontFace, font_files, is_printable, matplotlib_font_dir, read_faces
from tuneddml.data.glyph_render import GlyphRenderer, build_glyph_set, homoglyph_pairs
from tuneddml.data.glyphs import _write_cache
from tuneddml.errors import ConfigError


def test_tiny_parts_are_class_disjoint_and_labelled_contiguously(tiny):
    info = tiny.info
    assert info["num_classes"] == 62 and info["num_fonts"] == 22
    assert set(info["train_classes"]).isdisjoint(info["test_classes"])
    assert len(info["train_classes"]) + len(info["test_classes"]) == info["num_classes"]
    for part, names in ((tiny.train, info["train_classes"]), (tiny.test, info["test_classes"])):
        assert np.array_equal(np.unique(part.labels), np.arange(len(names)))
        assert part.kind == "image" and part.item_shape == (1, 32, 32)
        assert part.data.dtype == np.uint8
    assert tiny.augmentation == "glyph"


def test_tiny_images_are_not_empty_and_one_per_font(tiny):
    for part in (tiny.train, tiny.test):
        assert (part.data.reshape(len(part), -1).max(1) > 0).all()
        counts = np.bincount(part.labels)
        assert counts.min() >= 10 and counts.max() <= 22  # min_fonts .. number of fonts
        batch = part.load(np.arange(5))
        assert batch.dtype.is_floating_point and 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    # one image per font: no two images of a class are identical across the whole set
    flat = np.concatenate([tiny.train.data, tiny.test.data]).reshape(-1, 32 * 32)
    assert len(np.unique(flat, axis=0)) > 0.95 * len(flat)


def test_tiny_cold_render_is_fast_and_cache_is_reused(tiny_cold, glyph_cache):
    dataset, cold_seconds = tiny_cold
    assert cold_seconds < 10  # about 0.5 s on a quiet machine; generous for a loaded CI box
    start = time.perf_counter()
    again = DATASETS.build("glyphs-tiny", {}, root=str(glyph_cache))
    warm_seconds = time.perf_counter() - start
    assert again.info["from_cache"] and not dataset.info["from_cache"]
    assert warm_seconds < cold_seconds
    assert np.array_equal(again.train.data, dataset.train.data)
    assert Path(again.info["cache"]).parent == glyph_cache
    assert not list(glyph_cache.glob("*.tmp"))


def test_render_is_deterministic(tiny, tmp_path):
    fresh = DATASETS.build("glyphs-tiny", {}, root=str(tmp_path))
    assert not fresh.info["from_cache"]
    assert np.array_equal(fresh.train.data, tiny.train.data)
    assert np.array_equal(fresh.test.labels, tiny.test.labels)


def test_split_seed_changes_the_split_but_not_the_classes(tiny, glyph_cache):
    other = DATASETS.build("glyphs-tiny", {"split_seed": 1}, root=str(glyph_cache))
    assert other.info["train_classes"] != tiny.info["train_classes"]
    assert sorted(other.info["train_classes"] + other.info["test_classes"]) == sorted(
        tiny.info["train_classes"] + tiny.info["test_classes"]
    )


def test_smaller_image_size_keeps_the_class_list(tiny, glyph_cache):
    small = DATASETS.build("glyphs-tiny", {}, root=str(glyph_cache), image_size=16)
    assert small.train.item_shape == (1, 16, 16)
    assert small.info["train_classes"] == tiny.info["train_classes"]
    assert (small.train.data.reshape(len(small.train), -1).max(1) > 0).all()


def test_env_variable_sets_the_default_cache(monkeypatch, glyph_cache, tiny):
    monkeypatch.setenv("TUNEDDML_CACHE", str(glyph_cache))
    dataset = DATASETS.build("glyphs-tiny", {})
    assert dataset.info["from_cache"] and dataset.info["cache"] == tiny.info["cache"]


def test_homoglyphs_are_merged_and_lookalikes_kept_apart(mpl_faces):
    chars = "AΑАBΒВoοоO0lI1"  # Latin, Greek, Cyrillic capitals A and B; o/O/0; l/I/1
    glyphs = build_glyph_set(mpl_faces, image_size=32, min_fonts=10, chars=map(ord, chars))
    assert "AΑА" in glyphs.classes and "BΒВ" in glyphs.classes and "oοо" in glyphs.classes
    for single in "O0lI1":
        assert single in glyphs.classes
    assert len(glyphs.classes) == 8
    # a merged class still has one image per font, not one per member
    a = glyphs.classes.index("AΑА")
    fonts_of_a = glyphs.font_index[glyphs.labels == a]
    assert len(fonts_of_a) == len(set(fonts_of_a.tolist()))


def test_homoglyph_pairs_is_exact():
    rng = np.random.default_rng(0)
    images = (rng.random((300, 1, 8, 8)) < 0.2).astype(np.uint8) * 255
    images[150:] = images[:150]
    images[150::2, 0, 0, 0] = 255 - images[150::2, 0, 0, 0]  # every other copy differs by one pixel
    found = {tuple(p) for p in homoglyph_pairs(images, 1.5).tolist()}
    x = images.reshape(300, -1).astype(np.float64) / 255
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if dist[i, j] < 1.5}
    assert found == expected and len(found) >= 150


def test_notdef_and_empty_glyphs_are_dropped():
    dejavu = str(matplotlib_font_dir() / "DejaVuSans.ttf")
    unmapped, space = 0xE0FF, 0x20  # not in DejaVu's cmap (renders .notdef); draws nothing
    face = FontFace(dejavu, 0, "claims-too-much", frozenset({ord("A"), unmapped, space}))
    renderer = GlyphRenderer(face, 32)
    assert renderer.render(space) is None
    assert np.array_equal(renderer.render(unmapped), renderer.notdef)
    glyphs = build_glyph_set([face], image_size=32, min_fonts=1)
    assert glyphs.classes == ["A"]


def test_poison_fonts_are_excluded_and_computer_modern_is_alnum_only(mpl_faces):
    names = {p.stem for p in font_files([matplotlib_font_dir()])}
    assert names and not any(
        n.startswith(("LastResortHE", "STIXNonUni", "STIXSiz"))
        or n in ("cmex10", "cmsy10", "DejaVuSansDisplay")
        for n in names
    )
    assert "DejaVuSans" in names and "cmr10" in names
    by_name = {Path(f.path).stem: f for f in mpl_faces}
    assert by_name["cmr10"].codepoints <= ALNUM and len(by_name["cmr10"].codepoints) == 62
    assert len(by_name["DejaVuSans"].codepoints) > 3000


@pytest.mark.parametrize(
    ("codepoint", "printable"),
    [(ord("A"), True), (0x20, False), (0x0301, False), (0x07, False), (0x200B, False), (0x2200, True)],
)
def test_non_printing_code_points_are_skipped(codepoint, printable):
    assert is_printable(codepoint) is printable


def test_too_few_classes_is_a_config_error(glyph_cache):
    with pytest.raises(ConfigError) as err:
        DATASETS.build("glyphs-tiny", {"min_fonts": 23}, root=str(glyph_cache))
    assert err.value.field == "dataset.min_fonts"


def test_cache_root_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError) as err:
        DATASETS.build("glyphs-tiny", {}, root=str(tmp_path / "file"))
    assert err.value.field == "data_root"


def test_interrupted_cache_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    from tuneddml.data import glyphs as glyphs_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    glyph_set = glyphs_module._read_cache(Path(tiny.info["cache"]))[0]
    monkeypatch.setattr(glyphs_module.np, "savez_compressed", explode)
    with pytest.raises(KeyboardInterrupt):
        _write_cache(tmp_path / "glyphs-x.npz", glyph_set, {})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_is_rendered_again(tiny, tmp_path):
    (tmp_path / Path(tiny.info["cache"]).name).write_bytes(b"PK\x03\x04 half a zip file")
    again = DATASETS.build("glyphs-tiny", {}, root=str(tmp_path))
    assert not again.info["from_cache"]
    assert np.array_equal(again.train.data, tiny.train.data)


def test_xl_reads_collections_and_extra_folders(tmp_path, glyph_cache):
    from fontTools.ttLib import TTCollection, TTFont

    fonts = []
    for i, name in enumerate(("cmr10", "cmss10")):  # small fonts, quick to copy
        font = TTFont(str(matplotlib_font_dir() / f"{name}.ttf"))
        font["name"].setName(f"TestFace{i}", 6, 3, 1, 0x409)  # a new PostScript name: not a duplicate
        fonts.append(font)
    collection = TTCollection()
    collection.fonts = fonts
    (tmp_path / "fonts").mkdir()
    collection.save(str(tmp_path / "fonts" / "pair.ttc"))
    faces = read_faces(font_files([tmp_path / "fonts"]))
    assert [f.index for f in faces] == [0, 1] and {f.name for f in faces} == {"TestFace0", "TestFace1"}
    # 22 matplotlib faces + 2 in the collection (whose cmap is read in full: it is not named cm*);
    # only A-Z, a-z, 0-9 are in 23 or more of them
    xl = DATASETS.build(
        "glyphs-xl", {"font_dirs": str(tmp_path / "fonts"), "min_fonts": 23}, root=str(glyph_cache)
    )
    assert xl.info["num_fonts"] == 24 and xl.info["num_classes"] == 62
    assert "TestFace1#1" in xl.info["fonts"]
    own = DATASETS.build(
        "glyphs-xl",
        {"font_dirs": str(tmp_path / "fonts"), "min_fonts": 2, "matplotlib_fonts": False}, root=str(glyph_cache),
    )
    assert own.info["num_fonts"] == 2 and set(own.info["fonts"]) == {"TestFace0", "TestFace1#1"}


@pytest.mark.slow
def test_full_glyphs(tmp_path_factory):
    cache = tmp_path_factory.mktemp("full-glyphs")
    cold = DATASETS.build("glyphs", {}, root=str(cache))
    start = time.perf_counter()
    warm = DATASETS.build("glyphs", {}, root=str(cache))
    assert time.perf_counter() - start < 5 and warm.info["from_cache"]
    info = warm.info
    assert 2000 <= info["num_classes"] <= 2600 and info["num_fonts"] == 22
    assert "AΑА" in info["train_classes"] + info["test_classes"]
    assert set(info["train_classes"]).isdisjoint(info["test_classes"])
    assert info["cache_bytes"] < 10_000_000
    assert np.array_equal(cold.test.data, warm.test.data)


def test_fonts_that_cannot_be_read_or_rendered_are_skipped(tmp_path):
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    assert read_faces([tmp_path / "broken.ttf"]) == []
    dejavu = FontFace(str(matplotlib_font_dir() / "DejaVuSans.ttf"), 0, "DejaVuSans", frozenset({ord("A")}))
    bogus = FontFace(str(tmp_path / "broken.ttf"), 0, "Bogus", frozenset({ord("A")}))
    glyphs = build_glyph_set([bogus, dejavu], image_size=32, min_fonts=1)
    assert glyphs.classes == ["A"] and glyphs.fonts == ["DejaVuSans"]
