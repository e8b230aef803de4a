"""Turn run results into text for people and JSON lines / CSV for scripts (no printing here)."""

from __future__ import annotations

import json
import os
from typing import Any

from rtagx.run.events import FileOutcome, RunSummary

STAGE_ORDER = (
    "resolve-model",
    "scan",
    "diff",
    "load-model",
    "text",
    "load-vectors",
    "ray-start",  # --engine ray: joining the cluster and the model probe on a worker
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


def outcome_line(outcome: FileOutcome, *, show_scores: bool = True, removal: bool = False) -> str:
    """One line per file: what happened and the tags (with scores). ``removal``: an ``untag``
    outcome, told in words of removal rather than of scoring."""
    path = display_path(outcome.path)
    if outcome.action == "skipped":
        return f"{'skipped':<12}{path}: {outcome.reason}" + (f" ({outcome.detail})" if outcome.detail else "")
    if removal:
        removed = ", ".join(outcome.removed)
        return f"{outcome.action:<12}{path}: " + (f"removed {removed}" if removed else "no keyword of rtagx's")
    tags = ", ".join(f"{t} {s:.3f}" if show_scores else t for t, s in outcome.tags) or "(no tag above the threshold)"
    changes = ""
    if outcome.added or outcome.removed:
        parts = [f"+{k}" for k in outcome.added] + [f"-{k}" for k in outcome.removed]
        changes = "  [" + " ".join(parts) + "]"
    warned = "  (warning: " + ", ".join(outcome.warnings) + ")" if outcome.warnings else ""
    return f"{outcome.action:<12}{path}: {tags}{changes}{warned}"


def summary_lines(summary: RunSummary, *, removal: bool = False) -> list[str]:
    """The summary: counts, then timings. ``removal``: untag's, in words of removal."""
    s = summary
    verb = "would write" if s.dry_run else "written"
    skipped = f"skipped {s.skipped}"
    if s.skip_reasons:
        skipped += " (" + ", ".join(f"{r} {n}" for r, n in sorted(s.skip_reasons.items())) + ")"
    first = (
        f"{s.seen} files: embedded {s.embedded}, reused {s.reused}, tagged {s.tagged}, "
        f"{verb} {s.written}, unchanged {s.unchanged}, {skipped}"
    )
    if removal:
        removed = "would remove rtagx's keywords from" if s.dry_run else "removed rtagx's keywords from"
        first = f"{s.seen} files: {removed} {s.written}, unchanged {s.unchanged}, {skipped}"
    if s.left_untagged:
        first += f"; left alone {s.left_untagged} untagged by `rtagx untag`"
    stages = [f"{name} {s.timings[name]:.2f}s" for name in STAGE_ORDER if s.timings.get(name, 0) >= 0.005]
    per_model = [f"{k[7:]} {v:.2f}s" for k, v in s.timings.items() if k.startswith("encode:")]
    if per_model:  # several models: each one's share of the encode time
        stages = [f"{t} ({', '.join(per_model)})" if t.startswith("encode ") else t for t in stages]
    rate = f", {s.embedded / s.wall_seconds:.1f} images/s" if s.embedded and s.wall_seconds else ""
    second = f"time {s.wall_seconds:.1f}s{rate}" + (" (" + ", ".join(stages) + ")" if stages else "")
    if s.encoder_backend and s.encoder_backend != "eager":
        second += f"; image tower on {s.encoder_backend}"
    lines = [first, second]
    if s.interrupted:
        lines.append("interrupted: every finished batch is saved; run the same command again to continue")
    return lines


#: The header row of ``--csv``.
CSV_HEADER = ("path", "tag", "score", "action")


def csv_rows(outcome: FileOutcome) -> list[list[str]]:
    """The ``--csv`` rows of one file: one per chosen tag; a file with no tag (or skipped, as
    ``skipped:REASON``) still gets one row with an empty tag, so every file seen is listed."""
    path = display_path(outcome.path)
    if outcome.action == "skipped":
        return [[path, "", "", f"skipped:{outcome.reason}"]]
    if not outcome.tags:
        return [[path, "", "", outcome.action]]
    return [[path, tag, f"{score:.4f}", outcome.action] for tag, score in outcome.tags]
