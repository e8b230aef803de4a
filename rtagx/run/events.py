"""What a run reports: one :class:`FileOutcome` per file, a :class:`RunSummary`, and the
:class:`RunEvents` callbacks through which the library tells its caller (the CLI renders them as
progress bars, text, JSON or CSV lines). The library never prints."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FileOutcome:
    """What happened to one file. ``action``: written, unchanged, would-write, skipped."""

    path: Path
    action: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    embedded: bool = False
    reused: bool = False
    reason: str | None = None
    detail: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    target: str | None = None
    written_to: Path | None = None
    warnings: list[str] = field(default_factory=list)  # from the keyword write (e.g. a field left stale)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": os.fsdecode(self.path).encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            "action": self.action,
            "tags": [{"tag": t, "score": round(float(s), 4)} for t, s in self.tags],
        }
        if self.action == "skipped":
            out["reason"] = self.reason
            out["detail"] = self.detail
        else:
            out["embedded"] = self.embedded
            out["added"] = self.added
            out["removed"] = self.removed
            if self.target:
                out["target"] = self.target
            if self.written_to and self.written_to != self.path:
                out["written_to"] = str(self.written_to)
        if self.warnings:
            out["warnings"] = self.warnings
        return out


@dataclass
class RunSummary:
    seen: int = 0
    embedded: int = 0
    reused: int = 0
    tagged: int = 0
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    left_untagged: int = 0  # files under a path `untag` cleared inside a root: neither seen nor skipped
    decoded: int = 0  # image decodes (a run of several models decodes each file once for all of them)
    skip_reasons: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: bool = False
    dry_run: bool = False
    encoder_backend: str = ""  # the CPU image tower's backend at the end, and why it fell back ("" off the CPU)

    def add(self, outcome: FileOutcome) -> None:
        if outcome.action == "skipped":
            self.skipped += 1
            self.skip_reasons[outcome.reason or "unknown"] += 1
            return
        if outcome.tags:
            self.tagged += 1
        if outcome.action in ("written", "would-write"):
            self.written += 1
        elif outcome.action == "unchanged":
            self.unchanged += 1

    def count_decoded(self, n: int = 1) -> None:
        """Count decodes; decode threads call it at once, so it adds under the timings' lock."""
        with Timer._lock:
            self.decoded += n

    def as_json(self) -> dict[str, Any]:
        rate = self.embedded / self.timings["encode"] if self.timings.get("encode") else 0.0
        return {
            "summary": True,
            "seen": self.seen,
            "embedded": self.embedded,
            "decoded": self.decoded,
            "reused": self.reused,
            "tagged": self.tagged,
            "written": self.written,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "skip_reasons": dict(sorted(self.skip_reasons.items())),
            "left_untagged": self.left_untagged,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "seconds": round(self.wall_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "images_per_second": round(self.embedded / self.wall_seconds, 2)
            if self.wall_seconds and self.embedded
            else 0.0,
            "encode_images_per_second": round(rate, 2),
        } | ({"encoder_backend": self.encoder_backend} if self.encoder_backend else {})


@dataclass
class RunEvents:
    """Callbacks the caller may set; the library never prints."""

    on_file: Callable[[FileOutcome], None] | None = None
    on_stage: Callable[[str, int], None] | None = None  # (stage name, total items) when a stage starts
    on_progress: Callable[[str, int], None] | None = None  # (stage name, items done since last call)
    on_wait_lock: Callable[[], None] | None = None
    on_message: Callable[[str], None] | None = None

    def file(self, outcome: FileOutcome) -> None:
        if self.on_file:
            self.on_file(outcome)

    def stage(self, name: str, total: int) -> None:
        if self.on_stage:
            self.on_stage(name, total)

    def progress(self, name: str, n: int = 1) -> None:
        if self.on_progress:
            self.on_progress(name, n)

    def message(self, text: str) -> None:
        if self.on_message:
            self.on_message(text)


class Timer:
    """Adds the seconds spent inside ``with Timer(timings, name):`` to ``timings[name]``. Safe to use
    from several threads at once: each entry adds under a lock, so no second is lost."""

    _lock = threading.Lock()

    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        add_time(self.timings, self.name, time.perf_counter() - self.start)


def add_time(timings: dict[str, float], name: str, seconds: float) -> None:
    """``timings[name] += seconds`` under one lock: decode threads and the writer thread share it."""
    with Timer._lock:
        timings[name] = timings.get(name, 0.0) + seconds


def report_skip(path: Path, reason: str, detail: str, summary: RunSummary, events: RunEvents) -> None:
    """Count a skipped file and tell the caller about it."""
    outcome = FileOutcome(path, "skipped", reason=reason, detail=detail)
    summary.add(outcome)
    events.file(outcome)
