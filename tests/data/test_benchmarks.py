"""Each benchmark loader on a tiny fixture written in the official layout, and the bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from tuneddml.data import DATASETS
from tuneddml.errors import ConfigError


def write_cub(root: Path, write_image) -> tuple[Path, list[Path]]:
    base = root / "CUB_200_2011"
    images, labels, split, names, paths = [], [], [], [], []
    image_id = 0
    for c in (1, 2, 100, 101, 102, 200):
        folder = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {folder}")
        for k in range(2):
            image_id += 1
            name = f"{folder}/Bird_{c}_{k:04d}_{image_id}.jpg"
            paths.append(write_image(base / "images" / name, seed=image_id))
            images.append(f"{image_id} {name}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {k}")
    for file, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("classes.txt", names),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    return root, paths


def write_cars(root: Path, write_image) -> tuple[Path, list[Path]]:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test", "relative_im_path"]
    classes = [1, 1, 2, 2, 98, 99, 99, 150, 196, 196]
    annotations = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    paths = []
    for i, c in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        paths.append(write_image(root / rel, seed=i))
        annotations[0, i] = (
            np.array([[1]], np.uint8),
            np.array([[2]], np.uint8),
            np.array([[20]], np.uint16),
            np.array([[15]], np.uint16),
            np.array([[c]], np.uint8),
            np.array([[i % 2]], np.uint8),
            rel,
        )
    names = np.array([f"Car {c}" for c in range(1, 197)], dtype=object)[None]
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})
    return root, paths


def write_sop(root: Path, write_image) -> tuple[Path, list[Path]]:
    base = root / "Stanford_Online_Products"
    paths = []
    image_id = 0
    for split, classes in (("train", (1, 2, 3)), ("test", (11319, 11320))):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for k in range(2):
                image_id += 1
                rel = f"{'bicycle' if c % 2 else 'chair'}_final/{c}_{k}.JPG"
                paths.append(write_image(base / rel, seed=image_id))
                lines.append(f"{image_id} {c} {1 + c % 2} {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root, paths


def write_inshop(root: Path, write_image) -> tuple[Path, list[Path]]:
    rows = [
        ("id_00000001", "train"),
        ("id_00000001", "train"),
        ("id_00000002", "train"),
        ("id_00000002", "train"),
        ("id_00000003", "query"),
        ("id_00000003", "gallery"),
        ("id_00000003", "gallery"),
        ("id_00000004", "query"),
        ("id_00000004", "gallery"),
        ("id_00000005", "gallery"),
    ]
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    paths = []
    for i, (item, status) in enumerate(rows):
        name = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        paths.append(write_image(root / "Img" / name, seed=i))
        lines.append(f"{name:<60}{item:<16}{status}")  # the official file pads its columns
    (root / "Eval").mkdir()
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root, paths


WRITERS = {"cub200": write_cub, "cars196": write_cars, "sop": write_sop, "inshop": write_inshop}
LIST_FILES = {
    "cub200": "CUB_200_2011/image_class_labels.txt",
    "cars196": "cars_annos.mat",
    "sop": "Stanford_Online_Products/Ebay_test.txt",
    "inshop": "Eval/list_eval_partition.txt",
}


def build(name: str, root: Path, **params):
    return DATASETS.build(name, params, root=str(root), image_size=16)


def test_cub_official_class_split(tmp_path, write_image):
    root, _ = write_cub(tmp_path, write_image)
    data = build("cub200", root)
    assert (len(data.train), len(data.test)) == (6, 6)  # classes 1, 2, 100 | 101, 102, 200
    assert list(data.train.labels) == [0, 0, 1, 1, 2, 2] and list(data.test.labels) == [0, 0, 1, 1, 2, 2]
    assert all("/101." in str(p) or "/102." in str(p) or "/200." in str(p) for p in data.test.paths)
    batch = data.train.load(np.array([0, 3]))
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    assert data.augmentation == "natural" and data.test_gallery is None
    # the dataset's own folder works as root too
    assert len(build("cub200", root / "CUB_200_2011").train) == 6


def test_cars_official_class_split(tmp_path, write_image):
    root, _ = write_cars(tmp_path, write_image)
    data = build("cars196", root)
    assert list(data.train.labels) == [0, 0, 1, 1, 2]  # classes 1, 2, 98
    assert list(data.test.labels) == [0, 0, 1, 2, 2]  # classes 99, 150, 196
    assert data.train.paths[0] == root / "car_ims" / "000001.jpg"
    assert data.test.load(np.arange(5)).shape == (5, 3, 16, 16)


def test_sop_reads_both_list_files(tmp_path, write_image):
    root, _ = write_sop(tmp_path, write_image)
    for where in (root, root / "Stanford_Online_Products"):
        data = build("sop", where)
        assert (len(data.train), len(data.test)) == (6, 4)
        assert data.info["num_train_classes"] == 3 and data.info["num_test_classes"] == 2
        assert sorted(set(data.test.labels.tolist())) == [0, 1]
    assert data.train.load(np.array([5])).shape == (1, 3, 16, 16)


def test_inshop_query_and_gallery_share_labels(tmp_path, write_image):
    root, _ = write_inshop(tmp_path, write_image)
    data = build("inshop", root)
    assert len(data.train) == 4 and list(data.train.labels) == [0, 0, 1, 1]
    assert len(data.test) == 2 and len(data.test_gallery) == 4
    # queries are items 3 and 4; the gallery holds 3, 3, 4 and a distractor 5
    assert list(data.test.labels) == [0, 1] and list(data.test_gallery.labels) == [0, 0, 1, 2]
    assert data.test_gallery.load(np.arange(4)).shape == (4, 3, 16, 16)
    assert data.info["num_query_images"] == 2 and data.info["num_gallery_images"] == 4


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_folder(name, tmp_path):
    with pytest.raises(ConfigError) as err:
        build(name, tmp_path / "not-there")
    assert err.value.field == "data_root" and err.value.value == str(tmp_path / "not-there")
    assert err.value.expected.startswith("a folder in the")
    with pytest.raises(ConfigError) as err:
        DATASETS.build(name, {}, root=None)
    assert err.value.field == "data_root"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_list_file(name, tmp_path, write_image):
    root, _ = WRITERS[name](tmp_path, write_image)
    (tmp_path / LIST_FILES[name]).unlink()
    with pytest.raises(ConfigError) as err:
        build(name, root)
    assert err.value.field == "data_root" and Path(LIST_FILES[name]).name in err.value.expected


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_image(name, tmp_path, write_image):
    root, paths = WRITERS[name](tmp_path, write_image)
    paths[-1].unlink()
    with pytest.raises(ConfigError) as err:
        build(name, root)
    assert err.value.field == "data_root" and err.value.value == str(root)
    assert "missing image" in err.value.expected and paths[-1].name in err.value.expected


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_is_named(name, damage, tmp_path, write_image):
    root, paths = WRITERS[name](tmp_path, write_image)
    bad = paths[1]
    data = bad.read_bytes()
    bad.write_bytes(b"this is not a JPEG" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ConfigError) as err:
        build(name, root)
    assert err.value.field == "data_root" and err.value.value == str(bad)


def test_unchecked_bad_image_still_fails_cleanly_at_load(tmp_path, write_image):
    root, paths = write_cub(tmp_path, write_image)
    paths[0].write_bytes(b"garbage")
    data = build("cub200", root, verify=False)
    with pytest.raises(ConfigError) as err:
        data.train.load(np.array([0]))
    assert err.value.value == str(paths[0])


def test_malformed_list_lines(tmp_path, write_image):
    root, _ = write_cub(tmp_path, write_image)
    (root / "CUB_200_2011" / "image_class_labels.txt").write_text("1\n")
    with pytest.raises(ConfigError, match=r"line 1 of image_class_labels\.txt"):
        build("cub200", root)
    (root / "CUB_200_2011" / "image_class_labels.txt").write_text("1 bird\n")
    with pytest.raises(ConfigError, match="non-integer class"):
        build("cub200", root)


def test_cars_mat_without_annotations(tmp_path, write_image):
    root, _ = write_cars(tmp_path, write_image)
    scipy.io.savemat(root / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(ConfigError, match="annotations"):
        build("cars196", root)


def test_inshop_count_line_and_status_are_checked(tmp_path, write_image):
    root, _ = write_inshop(tmp_path, write_image)
    listing = root / "Eval" / "list_eval_partition.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join(["3", *lines[1:]]) + "\n")
    with pytest.raises(ConfigError, match="count"):
        build("inshop", root)
    listing.write_text("\n".join([*lines[:-1], lines[-1].replace("gallery", "val")]) + "\n")
    with pytest.raises(ConfigError, match="evaluation_status"):
        build("inshop", root)


def test_cli_reports_a_missing_folder_with_exit_code_2(tmp_path, capsys):
    from tuneddml.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["dataset=cub200", f"data_root={tmp_path / 'nowhere'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_root" in err[0] and "CUB-200-2011" in err[0]


def test_file_items_subset_keeps_paths_labels_and_size(tmp_path, write_image):
    from tuneddml.data.splits import make_split

    root, _ = write_cub(tmp_path, write_image)
    data = build("cub200", root)
    split = make_split(data, split="val", num_folds=3, fold=0, seed=0)
    assert split.train.item_shape == (3, 16, 16) and len(split.train) == 4 and len(split.query) == 2
    assert set(split.train.paths).isdisjoint(split.query.paths)
    assert set(split.train.paths) | set(split.query.paths) == set(data.train.paths)
    assert split.train.load(np.arange(4)).shape == (4, 3, 16, 16)
