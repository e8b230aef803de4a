"""Turn run results into text for people and JSON lines / CSV for scripts (no printing here)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from typing import Any

from rtagx.run.events import FileOutcome, RunSummary

STAGE_ORDER = (
    "resolve-model",
    "scan",
    "diff",
    "load-model",
    "text",
    "load-vectors",
    "decode",
    "encode",
    "store",
    "score",
    "write",
)


def display_path(path: os.PathLike[str] | str) -> str:
    """A printable path: undecodable bytes shown as U+FFFD instead of crashing the terminal."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\n", "\\n")


def json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def outcome_line(outcome: FileOutcome, *, show_scores: bool = True) -> str:
    """One line per file: what happened and the tags (with scores)."""
    path = display_path(outcome.path)
    if outcome.action == "skipped":
        return f"{'skipped':<12}{path}: {outcome.reason}" + (f" ({outcome.detail})" if outcome.detail else "")
    tags = ", ".join(f"{t} {s:.3f}" if show_scores else t for t, s in outcome.tags) or "(no tag above the threshold)"
    changes = ""
    if outcome.added or outcome.removed:
        parts = [f"+{k}" for k in outcome.added] + [f"-{k}" for k in outcome.removed]
        changes = "  [" + " ".join(parts) + "]"
    warned = "  (warning: " + ", ".join(outcome.warnings) + ")" if outcome.warnings else ""
    return f"{outcome.action:<12}{path}: {tags}{changes}{warned}"


def summary_lines(summary: RunSummary) -> list[str]:
    s = summary
    verb = "would write" if s.dry_run else "written"
    skipped = f"skipped {s.skipped}"
    if s.skip_reasons:
        skipped += " (" + ", ".join(f"{r} {n}" for r, n in sorted(s.skip_reasons.items())) + ")"
    first = (
        f"{s.seen} files: embedded {s.embedded}, reused {s.reused}, tagged {s.tagged}, "
        f"{verb} {s.written}, unchanged {s.unchanged}, {skipped}"
    )
    stages = [f"{name} {s.timings[name]:.2f}s" for name in STAGE_ORDER if s.timings.get(name, 0) >= 0.005]
    rate = f", {s.embedded / s.wall_seconds:.1f} images/s" if s.embedded and s.wall_seconds else ""
    second = f"time {s.wall_seconds:.1f}s{rate}" + (" (" + ", ".join(stages) + ")" if stages else "")
    lines = [first, second]
    if s.interrupted:
        lines.append("interrupted: every finished batch is saved; run the same command again to continue")
    return lines


def csv_text(outcomes: Iterable[FileOutcome]) -> str:
    """path,tag,score rows for every chosen tag (and one row with an empty tag for untagged files)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "tag", "score", "action"])
    for o in outcomes:
        if o.action == "skipped":
            writer.writerow([display_path(o.path), "", "", f"skipped:{o.reason}"])
            continue
        if not o.tags:
            writer.writerow([display_path(o.path), "", "", o.action])
        for tag, score in o.tags:
            writer.writerow([display_path(o.path), tag, f"{score:.4f}", o.action])
    return buf.getvalue()
