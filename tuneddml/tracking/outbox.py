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
import time
from collections import deque
from collections.abc import Callable
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

    def mark_done(self, key: str, failed: str | None = None) -> None:
        """``key`` is sent (or, with ``failed``, was refused by MLflow and is given up)."""
        with self._lock:
            if key not in self._done:
                self._append({"done": key, **({"failed": failed} if failed else {})})
                self._done.add(key)

    def is_done(self, key: str) -> bool:
        return key in self._done

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item for key, item in self._ops.items() if key not in self._done]


class Sender:
    """Sends an outbox's operations in order from a background thread with ``apply`` (one
    operation -> MLflow). A failure leaves the operation at the head of the queue and retries it
    later (backoff up to 10 s): an outage never blocks whoever hands operations over. An
    operation MLflow rejects as a bad request (:func:`refused`) is given up and listed in
    :attr:`refused` instead of blocking the rest."""

    def __init__(self, outbox: Outbox, apply: Callable[[dict[str, Any]], None]) -> None:
        self.outbox = outbox
        self._apply = apply
        self._queue: deque[dict[str, Any]] = deque(outbox.pending())
        self._wake = threading.Condition()
        self._busy = False
        self._stop = False
        self.offline: str | None = None  # why MLflow could not be reached, while it cannot
        self.refused: list[str] = []  # operations MLflow rejected as bad requests (not retried)
        self._thread = threading.Thread(target=self._send_loop, name="tuneddml-mlflow", daemon=True)
        self._thread.start()

    def submit(self, key: str, kind: str, **payload: Any) -> None:
        """Hand one operation over; one already handed over is ignored."""
        item = self.outbox.add(key, kind, **payload)
        if item is not None:
            with self._wake:
                self._queue.append(item)
                self._wake.notify_all()

    def _send_loop(self) -> None:
        backoff = 0.5
        while True:
            with self._wake:
                while not self._queue and not self._stop:
                    self._wake.wait()
                if self._stop or not self._queue:  # stopped: what is left stays in the outbox
                    return
                item = self._queue[0]
                self._busy = True
            try:
                self._apply(item)
            except Exception as exc:  # MLflow unreachable or failing: keep it, try again later
                if refused(exc):  # MLflow answered "no" (a bad request): retrying cannot help
                    self.outbox.mark_done(item["op"], failed=short_reason(exc))
                    self.refused.append(f"{item['op']}: {short_reason(exc)}")
                    with self._wake:
                        self._queue.popleft()
                        self._busy = False
                        self._wake.notify_all()
                    continue
                self.offline = short_reason(exc)
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
                    if self._stop:
                        return
                    self._wake.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self.outbox.mark_done(item["op"])
            self.offline = None
            backoff = 0.5
            with self._wake:
                self._queue.popleft()
                self._busy = False
                self._wake.notify_all()

    def unsent(self) -> str:
        """What the outbox still holds, in words (``6 epochs, 2 trial ends, the search's end``)."""
        names = {
            "start": "trial starts",
            "dataset": "trial datasets",
            "epoch": "epochs",
            "end": "trial ends",
            "weights": "weights files",
        }
        counts: dict[str, int] = {}
        for item in self.outbox.pending():
            counts[item["kind"]] = counts.get(item["kind"], 0) + 1
        parts = [f"{n} {names.get(k, k)}" for k, n in counts.items() if k != "finish"]
        if "finish" in counts:
            parts.append("the search's end")
        return ", ".join(parts)

    def wait_sent(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what was handed over to be sent, unless MLflow is
        unreachable (the sender goes on)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue and self.offline is None and time.monotonic() < deadline:
                self._wake.wait(min(0.5, max(0.01, deadline - time.monotonic())))

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the outbox to be sent; then stop sending. Returns
        how many operations are still pending (kept in the outbox for ``python -m tuneddml.tracking.sync``)."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue and time.monotonic() < deadline:
                self._wake.wait(min(0.5, max(0.01, deadline - time.monotonic())))
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=max(1.0, deadline - time.monotonic()) if self._busy else 1.0)
        return len(self.outbox.pending())


def short_reason(exc: BaseException) -> str:
    """Why an MLflow call failed, in a few words."""
    text = str(exc)
    for marker, reason in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
        ("Max retries exceeded", "no answer"),
    ):
        if marker in text:
            return reason
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0][:150]}"


def refused(exc: BaseException) -> bool:
    """Whether MLflow rejected the request itself (HTTP 4xx but 429): a bad request, not an outage."""
    status = getattr(exc, "get_http_status_code", None)
    if status is None or type(exc).__name__ != "RestException":
        return False
    try:
        code = int(status())
    except (TypeError, ValueError):
        return False
    return 400 <= code < 500 and code != 429
