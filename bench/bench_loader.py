"""Input pipeline throughput on real JPEG files against what the model consumes (run by hand).

Writes a CUB-200-2011-layout folder of JPEG photos-like images (``--classes`` x ``--per-class``,
about 500x375 or 375x500, smooth colour fields plus texture so that decoding costs what a photo
costs), then, in one run:

- the loader: images/s of the training pipeline (decode at 256, random resized crop and flip to
  224, m-per-class batches of 32) at 0, 1 and 2 worker processes, the model idle;
- the model: images/s of forward + backward + Adam step at batch 32, 224x224, of small_cnn and of
  timm's resnet18 (random weights), on the CPU with ``--threads`` torch threads, data in memory;
- the trainer: images/s of ``Trainer.train_epoch`` (small_cnn) at 0, 1 and 2 workers, the loader
  and the model sharing the machine.

Prints a Markdown table: loader images/s and the ratio loader / model (>= 1.5: the loader is not
the bottleneck).

    .venv/bin/python bench/bench_loader.py [--root DIR] [--batches 12] [--model-steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, today

from tuneddml.config import TrialConfig
from tuneddml.data import DATASETS
from tuneddml.data.loader import InputPipeline
from tuneddml.models import build_model
from tuneddml.sampling.m_per_class import MPerClass
from tuneddml.training import Trainer

BATCH = 32
SIZE = 224


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth random colour regions (an upsampled coarse field), edges and fine noise."""
    coarse = rng.random((rng.integers(3, 9), rng.integers(3, 9), 3)) * 255
    field = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(field).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(4):  # a few bright stripes and rings: edges that JPEG must code
        cx, cy, f = rng.random() * width, rng.random() * height, rng.uniform(0.02, 0.2)
        wave = np.sin(np.hypot(xx - cx, yy - cy) * f)[..., None] * rng.uniform(10, 40)
        pixels += wave * rng.random(3)
    pixels += rng.normal(0, 12, pixels.shape)  # sensor-like texture
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_cub(root: Path, classes: int, per_class: int) -> Path:
    """CUB-200-2011 layout: half the classes are ids 1.. (train), half 101.. (test)."""
    base = root / "CUB_200_2011"
    if (base / "images.txt").is_file():
        return root
    rng = np.random.default_rng(0)
    ids = [c + 1 for c in range(classes // 2)] + [101 + c for c in range(classes - classes // 2)]
    names, labels = [], []
    for class_id in ids:
        folder = f"{class_id:03d}.class_{class_id}"
        (base / "images" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
            w, h = int(w * rng.uniform(0.9, 1.0)), int(h * rng.uniform(0.9, 1.0))
            name = f"{folder}/img_{i:04d}.jpg"
            photo(rng, w, h).save(base / "images" / name, quality=90)
            names.append(name)
            labels.append(class_id)
    (base / "images.txt").write_text("".join(f"{n + 1} {name}\n" for n, name in enumerate(names)))
    (base / "image_class_labels.txt").write_text("".join(f"{n + 1} {c}\n" for n, c in enumerate(labels)))
    return root


def loader_rate(train, workers: int, batches: int) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of the training pipeline."""
    pipeline = InputPipeline({"train": train}, augmentation="natural", seed=0, device=torch.device("cpu"), workers=workers)
    sampler, rng = MPerClass(samples_per_class=4), np.random.default_rng(0)
    plan = (b for _ in range(batches + 1) for b in sampler.batches(train.labels, BATCH, rng))
    start = time.perf_counter()
    stream = pipeline.train((next(plan) for _ in range(batches + 1)), 1, torch.Generator())
    next(stream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(len(x) for _, x in stream)
    rate = count / (time.perf_counter() - start)
    pipeline.close()
    return rate, first


def model_rate(backbone: str, params: dict, steps: int) -> float:
    model = build_model(backbone, params, item_shape=(3, SIZE, SIZE), embedding_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(BATCH, 3, SIZE, SIZE)

    def step() -> None:
        loss = torch.nn.functional.normalize(model(x), dim=1).sum(1).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def trainer_rate(root: Path, workers: int, steps: int, threads: int) -> float:
    config = TrialConfig.from_flat(
        {
            "dataset": "cub200",
            "data_root": str(root),
            "split": "test",
            "workers": workers,
            "threads": threads,
            "batch_size": BATCH,
            "steps_per_epoch": steps,
            "epochs": 2,
        }
    )
    trainer = Trainer(config)
    trainer.train_epoch()  # warm-up: worker start, allocations
    start = time.perf_counter()
    trainer.train_epoch()
    rate = steps * BATCH / (time.perf_counter() - start)
    trainer.inputs.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=None, help="where to write (or reuse) the folder")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--batches", type=int, default=12, help="timed loader batches per setting")
    parser.add_argument("--model-steps", type=int, default=2, help="timed model / trainer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the model")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-loader-"))
    start = time.perf_counter()
    write_cub(root, args.classes, args.per_class)
    print(f"folder {root} ready in {time.perf_counter() - start:.1f} s", flush=True)
    train = DATASETS.build("cub200", {}, root=str(root), image_size=SIZE).train

    models = {
        "small_cnn": model_rate("small_cnn", {}, args.model_steps),
        "timm resnet18": model_rate("timm", {"model": "resnet18"}, args.model_steps),
    }
    for name, rate in models.items():
        print(f"model {name}: {rate:.1f} images/s (forward+backward, batch {BATCH}, {SIZE}px)", flush=True)
    rows = []
    for workers in args.workers:
        rate, first = loader_rate(train, workers, args.batches)
        fed = trainer_rate(root, workers, args.model_steps, args.threads)
        rows.append((workers, rate, first, fed))
        print(f"workers {workers}: loader {rate:.1f} images/s (first batch {first:.2f} s); "
              f"trainer small_cnn {fed:.1f} images/s", flush=True)

    names = list(models)
    print(f"\n{today()}; {machine()}; torch threads {args.threads}; {args.classes} classes x {args.per_class} "
          f"JPEGs ~500x375; batches of {BATCH} (m_per_class K=4), train view at {SIZE}\n")
    header = "| workers | loader images/s | first batch s | " + " | ".join(
        f"{n} {models[n]:.1f} images/s: ratio" for n in names
    ) + " | trainer (small_cnn) images/s |"
    print(header)
    print("|" + "---|" * (4 + len(names)))
    for workers, rate, first, fed in rows:
        ratios = " | ".join(f"{rate / models[n]:.2f}" for n in names)
        print(f"| {workers} | {rate:.1f} | {first:.2f} | {ratios} | {fed:.1f} |")


if __name__ == "__main__":
    main()
