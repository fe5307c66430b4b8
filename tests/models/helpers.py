"""Helpers for the pretrained backbones' tests: fill a Hugging Face cache as huggingface_hub lays
it out, compare saved and loaded weights."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch


def fill_cache(cache: Path, repo: str, files: dict[str, Path], commit: str | None = None) -> Path:
    """Put ``files`` (name in the repository -> a local file) into the cache as huggingface_hub
    does: content in ``blobs/<hash>``, ``snapshots/<commit>/<name>`` linking to it, and
    ``refs/main`` naming the commit. Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = commit or hashlib.sha1(repo.encode()).hexdigest()
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def same_weights(saved: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], skip: tuple[str, ...] = ()) -> None:
    """Every saved tensor (but those starting with ``skip``) is in ``loaded``, equal; and nothing
    of ``loaded`` is missing from ``saved`` (a weight left at random would be)."""
    kept = {k: v for k, v in saved.items() if not k.startswith(skip)}
    assert set(loaded) == set(kept), sorted(set(loaded) ^ set(kept))[:5]
    for key, value in kept.items():
        assert torch.equal(loaded[key], value), key
