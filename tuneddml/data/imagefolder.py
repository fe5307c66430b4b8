"""Users' own images: one sub-folder of images per class.

``root/<class>/<image files>`` (searched recursively inside each class folder). The classes are
split 50/50 into class-disjoint train and test parts by a permutation seeded with ``split_seed``,
unless ``root/train`` and ``root/test`` both exist: then each holds class folders, and their
class names must differ (zero-shot retrieval evaluates on unseen classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from tuneddml.data import DATASETS, RUNTIME
from tuneddml.data.base import Dataset
from tuneddml.data.files import FileItems, check_images, require_dir
from tuneddml.data.splits import class_halves
from tuneddml.errors import ConfigError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
LAYOUT = "a folder of class sub-folders of images (or train/ and test/ holding such)"


@DATASETS.register("imagefolder", ranges={"image_size": "[8, 1024]", "split_seed": "[0, 4294967295]"}, runtime=RUNTIME)
def load_imagefolder(
    *,
    root: str | None = None,
    image_size: int = 224,
    split_seed: int = 0,
    verify: bool = True,
    augmentation: Literal["natural", "glyph", "none"] = "natural",
) -> Dataset:
    """Images in class sub-folders; classes split 50/50 (seeded) unless train/ and test/ exist."""
    top = require_dir(root, LAYOUT)
    if (top / "train").is_dir() and (top / "test").is_dir():
        train_classes, test_classes = _class_folders(top / "train", top), _class_folders(top / "test", top)
        shared = sorted(set(train_classes) & set(test_classes))
        if shared:
            raise ConfigError(
                "data_root",
                str(top),
                f"{LAYOUT}; train/ and test/ must hold different classes, "
                f"both have {', '.join(shared[:5])}" + (" ..." if len(shared) > 5 else ""),
            )
        parts = [train_classes, test_classes]
        split = "train/ and test/ folders"
    else:
        classes = _class_folders(top, top)
        if len(classes) < 2:
            raise ConfigError(
                "data_root",
                str(top),
                f"{LAYOUT}; found {len(classes)} class folder(s) with images, need at least 2",
            )
        names = sorted(classes)
        halves = class_halves(len(names), split_seed)
        parts = [{names[i]: classes[names[i]] for i in half} for half in halves]
        split = f"classes split 50/50 with split_seed={split_seed}"
    if verify:
        check_images([p for part in parts for files in part.values() for p in files], root=top, layout=LAYOUT)
    items = []
    for part in parts:
        paths = [p for name in sorted(part) for p in part[name]]
        labels = np.concatenate([np.full(len(part[name]), i) for i, name in enumerate(sorted(part))])
        items.append(FileItems(paths, labels, image_size))
    info: dict[str, object] = {
        "root": str(top),
        "split": split,
        "num_train_classes": len(parts[0]),
        "num_test_classes": len(parts[1]),
        "num_train_images": len(items[0]),
        "num_test_images": len(items[1]),
        "train_classes": sorted(parts[0]),
        "test_classes": sorted(parts[1]),
    }
    return Dataset(name="imagefolder", train=items[0], test=items[1], augmentation=augmentation, info=info)


def _class_folders(folder: Path, top: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for every non-hidden sub-folder holding images."""
    classes: dict[str, list[Path]] = {}
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        files = sorted(
            p
            for p in sub.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(sub).parts)
            and p.is_file()
        )
        if files:
            classes[sub.name] = files
    if not classes:
        inside = "" if folder == top else f" in {folder.name}/"
        raise ConfigError("data_root", str(top), f"{LAYOUT}; no class folder with images{inside}")
    return classes
