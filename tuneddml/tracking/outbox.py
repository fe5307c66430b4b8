"""What a search still owes MLflow, kept in the search's own folder: an append-only file of JSON
lines (:data:`OUTBOX_FILE`).

Each operation is one line ``{"op": KEY, "kind": ..., ...}`` written before it is sent; once MLflow
has it, a line ``{"done": KEY}`` follows. The pending operations are those without their ``done``
line, in the order they were written. Keys are unique per operation (``epoch/<trial>/<epoch>``,
``end/<trial>``, ...): an operation added twice is kept once, and applying one is idempotent on
the MLflow side (:class:`~tuneddml.tracking.search_run.SearchRun` checks what a run already
holds), so a replay never duplicates.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

OUTBOX_FILE = "mlflow_outbox.jsonl"


class Outbox:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / OUTBOX_FILE
        self._lock = threading.Lock()
        self._ops: dict[str, dict[str, Any]] = {}  # key -> operation, in file order
        self._done: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash: its operation is re-sent
                    continue
                if "done" in item:
                    self._done.add(str(item["done"]))
                elif "op" in item:
                    self._ops.setdefault(str(item["op"]), item)

    def _append(self, item: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(item, default=str, allow_nan=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, key: str, kind: str, **payload: Any) -> dict[str, Any] | None:
        """Record an operation; None if ``key`` is already recorded (pending or done)."""
        with self._lock:
            if key in self._ops or key in self._done:
                return None
            item = {"op": key, "kind": kind, **payload}
            self._append(item)
            self._ops[key] = item
            return item

    def mark_done(self, key: str) -> None:
        with self._lock:
            if key not in self._done:
                self._append({"done": key})
                self._done.add(key)

    def is_done(self, key: str) -> bool:
        return key in self._done

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item for key, item in self._ops.items() if key not in self._done]
