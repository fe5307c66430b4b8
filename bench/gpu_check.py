# Long file: one prepared GPU check, its phases (data, loader, two models, evaluation, trials) and their Markdown table, kept in one script that travels alone.
"""The GPU check: what one trial does on one CUDA device, measured in under five minutes.

Run by ``bench/gpu_check.sh`` on a lent GPU machine (or any with CUDA); ``--smoke`` runs every
phase on the CPU with tiny sizes (small_cnn at 32 px, 200 embeddings) to prove the code runs::

    python bench/gpu_check.py --out gpu_check.md            # on a CUDA machine
    python bench/gpu_check.py --smoke --out smoke.md        # anywhere, seconds

Phases, each bounded by its own time budget (``--budget`` seconds, default 40, for the timed
loops; a failing phase is recorded and the next one runs):

1. data: a CUB-200-2011-layout folder of JPEGs (``CUB_LAYOUT``; 200 classes, classes 1-100 train);
2. loader: images/s of the trainer's input pipeline (DataLoader workers, train views);
3. models: images/s of training steps of a ResNet-50 (bf16 autocast, channels-last) and a
   ViT-S/16 (bf16 autocast) at 224 px, timm, random init, batch 64, with each one's peak memory;
4. evaluation: the kNN search of 120,000 x 512 embeddings, all queries against all, ``k`` = what
   the project's MAP@R table needs, by the project's ``TorchKnn`` on the device, its peak memory,
   its agreement with faiss on the CPU on a sample of queries, and the whole ``evaluate`` (no NMI);
5. trial: ``python -m tuneddml.train`` for 2 epochs on the generated folder (``--device cuda``);
6. sharing: two such trials at once on the one GPU (what ``--gpus-per-trial 0.5`` does), and,
   where Ray, MLflow and Optuna are installed, a 2-trial search with ``--gpus-per-trial 0.5``.

The figures go to a Markdown table (``--out``) with the date, the GPU's name and torch's version.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # tuneddml, and bench_eval's data (also when loaded by path)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402


class Report:
    """Rows of (phase, figure, value, note), written as one Markdown table."""

    def __init__(self, path: Path, header: dict[str, str]) -> None:
        self.path = path
        self.header = header
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, phase: str, figure: str, value: Any, note: str = "") -> None:
        if isinstance(value, float):  # three significant digits below 100 (0.254 s), else 1,234.5
            text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.1f}"
        else:
            text = str(value)
        self.rows.append((phase, figure, text, note))
        print(f"[{phase}] {figure}: {text} {note}".rstrip(), flush=True)
        self.write()

    def write(self) -> None:
        lines = [f"# GPU check, {self.header['date']}", ""]
        lines += [f"- {k}: {v}" for k, v in self.header.items() if k != "date"]
        lines += ["", "| phase | figure | value | note |", "|---|---|---|---|"]
        lines += [f"| {p} | {f} | {v} | {n.replace('|', '/')} |" for p, f, v, n in self.rows]
        self.path.write_text("\n".join(lines) + "\n")


def run_phase(report: Report, phase: str, fn: Callable[[], None]) -> None:
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # one phase failing must not cost the others
        traceback.print_exc()
        report.add(phase, "error", type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
    report.add(phase, "phase wall time (s)", time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | str:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else "n/a (CPU)"


# -- 1. data ---------------------------------------------------------------------------------
def write_cub_folder(root: Path, *, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """A folder in the CUB-200-2011 layout (``tuneddml.data.benchmarks.CUB_LAYOUT``): class ids
    1..classes, half of them train (<= 100 when 200), JPEGs of ``size`` px: each class a colour
    and a stripe orientation, each image its own noise, so a trial has something to learn."""
    from PIL import Image

    base = root / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    half = classes // 2
    ids = list(range(1, half + 1)) + list(range(101, 101 + classes - half))
    jobs = []
    image_id = 0
    for c in ids:
        folder = f"{c:03d}.Class_{c}"
        (base / "images" / folder).mkdir(exist_ok=True)
        for k in range(per_class):
            image_id += 1
            jobs.append((image_id, c, f"{folder}/Class_{c}_{k:04d}_{image_id}.jpg"))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def write(job: tuple[int, int, str]) -> None:
        image_id, c, name = job
        rng = np.random.default_rng([seed, image_id])
        crng = np.random.default_rng([seed, c])
        colour = crng.uniform(40, 215, size=3)
        angle = crng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * 4 * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
        pixels = colour[None, None, :] + 35 * stripes[..., None] + rng.normal(0, 20, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(base / "images" / name, quality=90)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, jobs))
    (base / "images.txt").write_text("".join(f"{i} {n}\n" for i, _, n in jobs))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c, _ in jobs))
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Class_{c}\n" for c in ids))
    return root


# -- 2. loader -------------------------------------------------------------------------------
def loader_rate(root: Path, image_size: int, batch: int, budget: float, workers: int) -> tuple[float, int]:
    """Images/s of the trainer's own input pipeline (``tuneddml.data.loader.InputPipeline``:
    decode at the resize size, random resized crop and flip, ``workers`` processes) on the CPU."""
    from tuneddml.data import DATASETS
    from tuneddml.data.loader import InputPipeline

    dataset = DATASETS.build("cub200", {}, field="dataset", root=str(root), image_size=image_size)
    train = dataset.train
    pipeline = InputPipeline(
        {"train": train}, augmentation=dataset.augmentation, seed=0, device=torch.device("cpu"), workers=workers
    )
    rng = np.random.default_rng(0)
    batches = (rng.choice(len(train), size=batch, replace=False) for _ in range(20))
    done, t0 = 0, time.perf_counter()
    try:
        for _indices, x in pipeline.train(batches, 1, torch.Generator().manual_seed(0)):
            done += len(x)
            if time.perf_counter() - t0 > budget:
                break
    finally:
        pipeline.close()
    return done / (time.perf_counter() - t0), done


# -- 3. models -------------------------------------------------------------------------------
def model_rate(
    backbone: str,
    params: dict[str, Any],
    *,
    device: torch.device,
    image_size: int,
    batch: int,
    channels_last: bool,
    bf16: bool,
    budget: float,
    max_steps: int,
) -> dict[str, Any]:
    """Training steps (forward, proxy-anchor loss, backward, AdamW) on random input already on
    the device: the model's own images/s, with its peak memory."""
    from tuneddml.losses import build_loss
    from tuneddml.models import build_model

    reset_peak(device)
    model = build_model(backbone, params, item_shape=(3, image_size, image_size), embedding_size=128).to(
        device
    )
    loss = build_loss("proxy_anchor", {}, num_classes=100, embedding_size=128).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
    x = torch.rand(batch, 3, image_size, image_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> torch.Tensor:
        with autocast:
            emb = model(x)
        total = loss(torch.nn.functional.normalize(emb.float(), dim=1), y)["total"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    for _ in range(3):  # warm-up: cuDNN's choice of kernels, the allocator
        step()
    sync(device)
    steps, t0 = 0, time.perf_counter()
    while steps < max_steps and (steps < 5 or time.perf_counter() - t0 < budget):
        last = step()
        steps += 1
    sync(device)
    seconds = time.perf_counter() - t0
    out = {"images_s": steps * batch / seconds, "steps": steps, "peak_mb": peak_mb(device)}
    out["finite"] = bool(torch.isfinite(last).item())
    return out


# -- 4. evaluation ---------------------------------------------------------------------------
def search_width(labels: np.ndarray) -> int:
    """The ``k`` the project's evaluation asks its kNN backend for, leave-one-out: the widest
    metric table (MAP@R needs max R; AP keeps 32), plus a column for ties, plus the query itself."""
    from tuneddml.evaluation.metrics import METRICS, EvalOptions

    options = EvalOptions((1, 2, 4, 8), 10, True, False, 0, 512, None)
    max_relevant = int(np.bincount(labels).max()) - 1
    k = max([1, *(METRICS.build(name).width(options, max_relevant) for name in METRICS)])
    return min(k + 1, len(labels) - 1) + 1


def evaluation_phase(report: Report, device: torch.device, n: int, dim: int, budget: float) -> None:
    from bench_eval import make_data

    from tuneddml.evaluation import FaissKnn, TorchKnn, evaluate

    x, labels = make_data(n, dim, noise=1.2, seed=0)  # SOP-like classes of 2-12 items
    k = search_width(labels)
    knn = TorchKnn(device=device)
    report.add("evaluation", "embeddings", f"{n:,} x {dim}", f"{labels.max() + 1:,} classes, k={k}")
    knn.search(x[:2048], x[:2048], min(k, 2048))  # warm-up (cuBLAS handles)
    reset_peak(device)
    t0 = time.perf_counter()
    sims, idx = knn.search(x, x, k)
    seconds = time.perf_counter() - t0
    report.add(
        "evaluation",
        "kNN search, all vs all (s)",
        seconds,
        f"TorchKnn on {device}, {knn.rows_per_chunk(n)} rows a chunk",
    )
    report.add("evaluation", "kNN search peak memory (MiB)", peak_mb(device))
    try:
        import faiss  # noqa: F401
    except ImportError:
        report.add("evaluation", "agreement with faiss (CPU)", "skipped", "faiss is not installed")
    else:
        sample = np.random.default_rng(1).choice(n, size=min(n, 4000), replace=False)
        t0 = time.perf_counter()
        ref_sims, ref_idx = FaissKnn().search(x[sample], x, k)
        cpu_s = time.perf_counter() - t0
        same = float((ref_idx == idx[sample]).mean())
        gap = float(np.abs(ref_sims - sims[sample]).max())
        report.add(
            "evaluation",
            "same neighbours as faiss (CPU)",
            f"{same:.6f}",
            f"{len(sample):,} queries; max |sim diff| {gap:.1e}; faiss took {cpu_s:.1f} s",
        )
    del sims, idx
    t0 = time.perf_counter()
    metrics = evaluate(x, labels, with_nmi=False, knn=knn)
    report.add(
        "evaluation",
        "evaluate(), no NMI (s)",
        time.perf_counter() - t0,
        f"map_at_r {metrics['map_at_r']:.4f}, recall_at_1 {metrics['recall_at_1']:.4f}; "
        "the rest of evaluate runs on the CPU",
    )


# -- 5./6. trials ----------------------------------------------------------------------------
def trial_settings(root: Path, *, smoke: bool, device: str) -> list[str]:
    """KEY=VALUE settings of the end-to-end trial; mixed precision as this tree names it."""
    from tuneddml.config import TrialConfig
    from tuneddml.errors import ConfigError

    settings = [
        "dataset=cub200",
        f"data_root={root}",
        f"device={device}",
        "split=test",
        "epochs=2",
        "seed=0",
    ]
    if smoke:
        settings += ["image_size=32", "backbone=small_cnn", "steps_per_epoch=2", "batch_size=8", "threads=1"]
    else:
        settings += [
            "image_size=224",
            "backbone=timm",
            "backbone.model=resnet50",
            "steps_per_epoch=15",
            "batch_size=64",
        ]
    try:
        import faiss  # noqa: F401
    except ImportError:
        settings.append("eval_nmi=false")  # NMI's k-means needs faiss
    if device != "cpu":
        for extra in (["amp=bf16", "channels_last=true"], ["amp=bf16"], ["amp=true"]):
            try:
                TrialConfig.from_flat({"dataset": "glyphs-tiny", **dict(s.split("=", 1) for s in extra)})
            except (ConfigError, TypeError, ValueError):
                continue
            settings += extra
            break
    return settings


def run_train(settings: list[str], *, in_process: bool, timeout: float) -> dict[str, Any]:
    """``python -m tuneddml.train SETTINGS --json``: its final JSON line and its wall time."""
    t0 = time.perf_counter()
    if in_process:
        import contextlib
        import io

        from tuneddml.train import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([*settings, "--json"])
            except SystemExit as exc:
                code = exc.code
        stdout, stderr = out.getvalue(), err.getvalue()
    else:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        done = subprocess.run(
            [sys.executable, "-m", "tuneddml.train", *settings, "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    seconds = time.perf_counter() - t0
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if code != 0 or not lines:
        tail = [line for line in (stderr + stdout).splitlines() if line.startswith("error")][-1:]
        tail = tail or (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"tuneddml.train exited {code}: {tail[0][:200]}")
    return {**json.loads(lines[-1]), "wall_s": seconds}


def trial_phase(report: Report, root: Path, smoke: bool, device: str, timeout: float) -> dict[str, Any]:
    settings = trial_settings(root, smoke=smoke, device=device)
    report.add(
        "trial",
        "command",
        "python -m tuneddml.train " + " ".join(s for s in settings if not s.startswith("data_root")),
    )
    out = run_train(settings, in_process=smoke, timeout=timeout)
    m = out["metrics"]
    report.add("trial", "2 epochs, wall time (s)", out["wall_s"], f"trainer's own seconds {out['seconds']}")
    report.add(
        "trial",
        "final map_at_r / recall_at_1",
        f"{m['map_at_r']:.4f} / {m['recall_at_1']:.4f}",
        out["status"],
    )
    return {"settings": settings, **out}


def sharing_phase(report: Report, single: dict[str, Any], left: Callable[[], float]) -> None:
    """Two trials at once on the one GPU, as two processes (what two 0.5-GPU trials are); then,
    time and packages allowing, a search of two trials with ``--gpus-per-trial 0.5``."""
    settings = single["settings"]
    t0 = time.perf_counter()
    timeout = max(5.0, min(100.0, left() - 5))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_train(settings, in_process=False, timeout=timeout), range(2)))
    both = time.perf_counter() - t0
    report.add(
        "sharing",
        "two 2-epoch trials at once, wall time (s)",
        both,
        f"each {runs[0]['wall_s']:.1f} / {runs[1]['wall_s']:.1f} s; the same trial alone took "
        f"{single['wall_s']:.1f} s: {2 * single['wall_s'] / both:.2f}x the trials per hour",
    )
    try:
        import mlflow  # noqa: F401
        import optuna  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        report.add("sharing", "search with --gpus-per-trial 0.5", "skipped", f"{exc.name} is not installed")
        return
    if left() < 45:
        report.add("sharing", "search with --gpus-per-trial 0.5", "skipped", f"{left():.0f} s left")
        return
    timeout = left() - 5
    with tempfile.TemporaryDirectory() as folder:
        overrides = [s for s in settings if s.split("=", 1)[0] not in ("seed", "epochs")] + ["epochs=1"]
        command = [
            sys.executable,
            "-m",
            "tuneddml.search",
            "--space=quick",
            "--num-samples",
            "2",
            "--max-concurrent",
            "2",
            "--gpus-per-trial",
            "0.5",
            "--cpus-per-trial",
            "4",
            "--storage",
            folder,
            "--name",
            "share",
            "--tracking-uri",
            f"sqlite:///{folder}/mlflow.db",
            *overrides,
        ]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        seconds = time.perf_counter() - t0
        peaks = []
        epochs = Path(folder) / "share" / "epochs.jsonl"
        if epochs.is_file():
            for line in epochs.read_text().splitlines():
                record = json.loads(line)
                if "system/gpu_peak_mb" in record:
                    peaks.append(round(record["system/gpu_peak_mb"]))
        tail = (done.stdout or done.stderr).strip().splitlines()[-1:] or [""]
        report.add(
            "sharing",
            "search, 2 trials at 0.5 GPU: exit, wall (s)",
            f"{done.returncode}, {seconds:.1f}",
            f"system/gpu_peak_mb per epoch {peaks}; {tail[0][:120]}",
        )


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gpu_check.md"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: prove that every phase runs")
    parser.add_argument("--budget", type=float, default=40.0, help="seconds for each timed loop")
    parser.add_argument(
        "--deadline", type=float, default=270.0, help="seconds for everything: later phases shrink or skip"
    )
    parser.add_argument("--data", help="a folder for the generated CUB layout (default: a temporary one)")
    args = parser.parse_args(argv)

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        line = "no CUDA device: skipped"
        print(line)
        Path(args.out).write_text(line + "\n")
        return 0
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(1)  # a shared CPU: no busy-waiting threads
    started = time.monotonic()

    def left() -> float:
        return args.deadline - (time.monotonic() - started)

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = "not installed"
    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "GPU": torch.cuda.get_device_name(0) if device.type == "cuda" else "none (smoke run on the CPU)",
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
        "timm": timm_version,
        "CPU cores": str(os.cpu_count()),
        "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report = Report(Path(args.out), header)
    report.write()
    budget = min(args.budget, 2.0) if smoke else args.budget
    size = 32 if smoke else 224
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data) if args.data else Path(scratch) / "cub"
        sizes = (
            {"classes": 12, "per_class": 4, "size": 40}
            if smoke
            else {"classes": 200, "per_class": 10, "size": 256}
        )
        run_phase(
            report,
            "data",
            lambda: report.add(
                "data",
                "CUB-layout JPEGs written",
                sizes["classes"] * sizes["per_class"],
                str(write_cub_folder(root, **sizes)),
            ),
        )

        rates: dict[str, float] = {}

        def loader() -> None:
            workers = 0 if smoke else min(8, (os.cpu_count() or 2) - 1)
            rate, n = loader_rate(root, size, 16 if smoke else 64, budget, workers)
            rates["loader"] = rate
            report.add(
                "loader", f"images/s, the input pipeline with {workers} workers", rate, f"{n} images at {size} px"
            )

        run_phase(report, "loader", loader)
        models = (
            [("small_cnn", {}, True)]
            if smoke
            else [("timm", {"model": "resnet50"}, True), ("timm", {"model": "vit_small_patch16_224"}, False)]
        )
        for backbone, params, channels_last in models:
            name = params.get("model", backbone)

            def one(backbone=backbone, params=params, channels_last=channels_last, name=name) -> None:
                out = model_rate(
                    backbone,
                    params,
                    device=device,
                    image_size=size,
                    batch=16 if smoke else 64,
                    channels_last=channels_last,
                    bf16=not smoke,
                    budget=budget,
                    max_steps=3 if smoke else 400,
                )
                how = ("bf16 autocast" if not smoke else "fp32") + (
                    ", channels-last" if channels_last else ""
                )
                report.add(
                    "model",
                    f"{name} training images/s",
                    out["images_s"],
                    f"{how}, batch {16 if smoke else 64}, {out['steps']} steps, loss finite: {out['finite']}",
                )
                report.add("model", f"{name} peak memory (MiB)", out["peak_mb"])
                if "loader" in rates:
                    report.add(
                        "model",
                        f"{name}: loader images/s / model images/s",
                        rates["loader"] / out["images_s"],
                        "below 1: one loader process cannot keep this model busy",
                    )

            run_phase(report, f"model {name}", one)
        run_phase(
            report,
            "evaluation",
            lambda: evaluation_phase(report, device, 200 if smoke else 120_000, 512, budget),
        )
        single: dict[str, Any] = {}
        if left() > 30:
            timeout = min(120.0, left() - 10)
            run_phase(
                report, "trial", lambda: single.update(trial_phase(report, root, smoke, device.type, timeout))
            )
        else:
            report.add(
                "trial", "2-epoch trial", "skipped", f"{left():.0f} s left of --deadline {args.deadline:.0f}"
            )
        if smoke:
            report.add("sharing", "two trials on one GPU", "skipped", "smoke run")
        elif single and left() > 40:
            run_phase(report, "sharing", lambda: sharing_phase(report, single, left))
        else:
            report.add(
                "sharing",
                "two trials on one GPU",
                "skipped",
                f"{left():.0f} s left, or no single trial to compare",
            )
    print(f"written: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
