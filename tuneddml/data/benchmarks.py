"""The four standard DML benchmarks, read from a local folder in their official layouts.

Nothing is downloaded: ``root`` (the trial's ``data_root``) must hold the dataset as its authors
distribute it. The class splits are the standard zero-shot ones (training and test classes are
disjoint; the official per-image train/test flags of CUB and Cars are not used):

- ``cub200``: CUB-200-2011 (Wah et al., 2011). ``CUB_200_2011/images.txt`` (``id path``),
  ``image_class_labels.txt`` (``id class``), ``images/``. Classes 1-100 train, 101-200 test.
- ``cars196``: Stanford Cars (Krause et al., 2013). ``cars_annos.mat`` (struct ``annotations``
  with ``relative_im_path`` and ``class``) next to ``car_ims/``. Classes 1-98 train, 99-196 test.
- ``sop``: Stanford Online Products (Oh Song et al., 2016). ``Ebay_train.txt`` / ``Ebay_test.txt``
  (a header line, then ``image_id class_id super_class_id path``).
- ``inshop``: DeepFashion In-Shop (Liu et al., 2016). ``Eval/list_eval_partition.txt`` (a count
  line, a header line, then ``image_name item_id evaluation_status``) and the images under
  ``Img/`` (``Img/img/...``); train items train, ``query`` images are queried against the
  ``gallery`` images.

Each accepts ``root`` being either the dataset's own folder or the folder that contains it under
its official name. Labels are remapped to 0..C-1 within each part. Every image is checked at load
time (``verify``), so a missing or unreadable file fails the trial before training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuneddml.data import DATASETS, RUNTIME
from tuneddml.data.base import Dataset
from tuneddml.data.files import FileItems, check_images, require_dir, require_file
from tuneddml.errors import ConfigError

CUB_LAYOUT = (
    "a folder in the CUB-200-2011 layout: CUB_200_2011/images.txt, CUB_200_2011/image_class_labels.txt, "
    "CUB_200_2011/images/"
)
CARS_LAYOUT = "a folder in the Cars196 layout: cars_annos.mat and car_ims/"
SOP_LAYOUT = (
    "a folder in the Stanford Online Products layout: Ebay_train.txt, Ebay_test.txt and the image folders"
)
INSHOP_LAYOUT = "a folder in the In-Shop layout: Eval/list_eval_partition.txt and Img/img/"
_RANGES = {"image_size": "[8, 1024]"}


@DATASETS.register("cub200", ranges=_RANGES, runtime=RUNTIME)
def load_cub200(*, root: str | None = None, image_size: int = 224, verify: bool = True) -> Dataset:
    """CUB-200-2011 birds: classes 1-100 train (5,864 images), 101-200 test (5,924)."""
    top = require_dir(root, CUB_LAYOUT)
    base = _locate(top, "images.txt", ("CUB_200_2011",))
    names = dict(_rows(base / "images.txt", top, CUB_LAYOUT, 2))
    labels = dict(_rows(base / "image_class_labels.txt", top, CUB_LAYOUT, 2))
    paths, classes = [], []
    for image_id, name in names.items():
        if image_id not in labels:
            raise ConfigError(
                "data_root",
                str(top),
                f"{CUB_LAYOUT}; image {image_id} has no class in image_class_labels.txt",
            )
        paths.append(base / "images" / name)
        classes.append(_int(labels[image_id], base / "image_class_labels.txt", top, CUB_LAYOUT))
    return _by_class_id("cub200", paths, np.array(classes), 100, top, CUB_LAYOUT, image_size, verify)


@DATASETS.register("cars196", ranges=_RANGES, runtime=RUNTIME)
def load_cars196(*, root: str | None = None, image_size: int = 224, verify: bool = True) -> Dataset:
    """Stanford Cars: classes 1-98 train (8,054 images), 99-196 test (8,131)."""
    import scipy.io

    top = require_dir(root, CARS_LAYOUT)
    base = _locate(top, "cars_annos.mat", ("cars196", "stanford_cars"))
    mat_path = require_file(base / "cars_annos.mat", top, CARS_LAYOUT)
    try:
        annotations = np.atleast_1d(scipy.io.loadmat(str(mat_path), squeeze_me=True)["annotations"])
        rel_paths = [str(p) for p in annotations["relative_im_path"]]
        classes = np.array([int(c) for c in annotations["class"]])
    except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:
        raise ConfigError(
            "data_root",
            str(top),
            f"{CARS_LAYOUT}; cars_annos.mat must hold a struct "
            f"'annotations' with fields relative_im_path and class ({exc!r})",
        ) from None
    paths = [base / p for p in rel_paths]
    return _by_class_id("cars196", paths, classes, 98, top, CARS_LAYOUT, image_size, verify)


@DATASETS.register("sop", ranges=_RANGES, runtime=RUNTIME)
def load_sop(*, root: str | None = None, image_size: int = 224, verify: bool = True) -> Dataset:
    """Stanford Online Products: 11,318 train classes (59,551 images), 11,316 test (60,502)."""
    top = require_dir(root, SOP_LAYOUT)
    base = _locate(top, "Ebay_train.txt", ("Stanford_Online_Products",))
    parts = []
    for split in ("train", "test"):
        list_file = base / f"Ebay_{split}.txt"
        rows = _rows(list_file, top, SOP_LAYOUT, 4, header_lines=1)
        paths = [base / row[3] for row in rows]
        classes = np.array([_int(row[1], list_file, top, SOP_LAYOUT) for row in rows])
        parts.append((paths, classes))
    if verify:
        check_images([p for paths, _ in parts for p in paths], root=top, layout=SOP_LAYOUT)
    train, test = (FileItems(paths, _remap(classes), image_size) for paths, classes in parts)
    return _dataset("sop", train, test, None, top)


@DATASETS.register("inshop", ranges=_RANGES, runtime=RUNTIME)
def load_inshop(*, root: str | None = None, image_size: int = 224, verify: bool = True) -> Dataset:
    """DeepFashion In-Shop: 3,997 train items (25,882 images); 14,218 queries vs 12,612 gallery images."""
    top = require_dir(root, INSHOP_LAYOUT)
    base = _locate(
        top, "Eval/list_eval_partition.txt", ("In-shop Clothes Retrieval Benchmark", "InShop", "inshop")
    )
    list_file = base / "Eval" / "list_eval_partition.txt"
    require_file(list_file, top, INSHOP_LAYOUT)
    lines = [line for line in list_file.read_text().splitlines() if line.strip()]
    count = lines[0].strip() if lines else ""
    rows = _rows(list_file, top, INSHOP_LAYOUT, 3, header_lines=2)
    if not count.isdigit() or int(count) != len(rows):
        raise ConfigError(
            "data_root",
            str(top),
            f"{INSHOP_LAYOUT}; {list_file.name} starts with the count {count!r} but lists {len(rows)} images",
        )
    # the archive's img/ folder sits in Img/ officially; some copies have it at the top
    image_dir = base / "Img"
    if rows and not (image_dir / rows[0][0]).exists() and (base / rows[0][0]).exists():
        image_dir = base
    by_status: dict[str, tuple[list[Path], list[str]]] = {s: ([], []) for s in ("train", "query", "gallery")}
    for name, item, status in rows:
        if status not in by_status:
            raise ConfigError(
                "data_root",
                str(top),
                f"{INSHOP_LAYOUT}; evaluation_status must be train, query or gallery, not {status!r}",
            )
        by_status[status][0].append(image_dir / name)
        by_status[status][1].append(item)
    if verify:
        check_images([p for paths, _ in by_status.values() for p in paths], root=top, layout=INSHOP_LAYOUT)
    train_paths, train_items = by_status["train"]
    query_paths, query_items = by_status["query"]
    gallery_paths, gallery_items = by_status["gallery"]
    eval_labels = _remap(np.array(query_items + gallery_items))  # one label space for both
    train = FileItems(train_paths, _remap(np.array(train_items)), image_size)
    query = FileItems(query_paths, eval_labels[: len(query_paths)], image_size)
    gallery = FileItems(gallery_paths, eval_labels[len(query_paths) :], image_size)
    return _dataset("inshop", train, query, gallery, top)


def _locate(top: Path, marker: str, official_names: tuple[str, ...]) -> Path:
    """The dataset's own folder: ``top`` itself, or its sub-folder with an official name."""
    if (top / marker).is_file():
        return top
    for name in official_names:
        if (top / name / marker).is_file():
            return top / name
    return top / official_names[0] if official_names else top


def _rows(path: Path, top: Path, layout: str, columns: int, header_lines: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a list file (the last column may contain spaces)."""
    require_file(path, top, layout)
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines[header_lines:], start=header_lines + 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise ConfigError(
                "data_root",
                str(top),
                f"{layout}; line {number} of {path.name} should have {columns} fields: {line.strip()!r}",
            )
        rows.append(fields)
    if not rows:
        raise ConfigError("data_root", str(top), f"{layout}; {path.name} lists no images")
    return rows


def _int(text: str, path: Path, top: Path, layout: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            "data_root", str(top), f"{layout}; {path.name} has a non-integer class {text!r}"
        ) from None


def _remap(ids: np.ndarray) -> np.ndarray:
    return np.unique(ids, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _by_class_id(
    name: str,
    paths: list[Path],
    classes: np.ndarray,
    last_train: int,
    top: Path,
    layout: str,
    image_size: int,
    verify: bool,
) -> Dataset:
    """Split by the official class ids: ``1..last_train`` train, the rest test."""
    if verify:
        check_images(paths, root=top, layout=layout)
    is_train = classes <= last_train
    parts = []
    for mask in (is_train, ~is_train):
        if not mask.any():
            side = "training" if mask is is_train else "test"
            raise ConfigError(
                "data_root",
                str(top),
                f"{layout}; no images of the {side} classes "
                f"({'1' if mask is is_train else last_train + 1}..)",
            )
        index = np.flatnonzero(mask)
        parts.append(FileItems([paths[i] for i in index], _remap(classes[index]), image_size))
    return _dataset(name, parts[0], parts[1], None, top)


def _dataset(name: str, train: FileItems, test: FileItems, gallery: FileItems | None, top: Path) -> Dataset:
    for part, items in (("training", train), ("test", test), ("gallery", gallery)):
        if items is not None and len(items) == 0:
            raise ConfigError("data_root", str(top), f"a dataset with {part} images")
    test_labels = test.labels if gallery is None else np.concatenate([test.labels, gallery.labels])
    info: dict[str, object] = {
        "root": str(top),
        "num_train_images": len(train),
        "num_train_classes": len(np.unique(train.labels)),
        "num_test_images": len(test_labels),
        "num_test_classes": len(np.unique(test_labels)),
    }
    if gallery is not None:
        info.update(num_query_images=len(test), num_gallery_images=len(gallery))
    return Dataset(name=name, train=train, test=test, test_gallery=gallery, augmentation="natural", info=info)
