"""``run_untag``: remove exactly the keywords rtagx wrote (and its private record)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rtagx.cache.store import path_key
from rtagx.errors import FileSkip
from rtagx.keywords import metadata
from rtagx.run.common import check_paths, open_locked
from rtagx.run.events import FileOutcome, RunEvents, RunSummary, report_skip
from rtagx.run.scan import ScanProblem, iter_scan, selected_extensions
from rtagx.settings import Settings, validate_settings


def run_untag(
    paths: Sequence[Path], settings: Settings, *, dry_run: bool = False, events: RunEvents | None = None
) -> RunSummary:
    """Remove exactly the keywords rtagx wrote (and its private record) from files under ``paths``."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    roots = check_paths(paths)
    store = open_locked(settings, events)
    try:
        forget: list[bytes] = []
        events.stage("write", 0)
        for item in iter_scan(
            roots,
            selected_extensions(settings),
            exclude=settings.exclude,
            include_hidden=settings.include_hidden,
            follow_symlinks=settings.follow_symlinks,
        ):
            summary.seen += 1
            if isinstance(item, ScanProblem):
                report_skip(item.path, item.reason, item.detail, summary, events)
                continue
            try:
                result = metadata.remove_own_keywords(
                    item.path,
                    target=settings.write,
                    sidecar_style=settings.sidecar_style,
                    preserve_mtime=settings.preserve_mtime,
                    dry_run=dry_run,
                )
            except FileSkip as e:
                report_skip(item.path, e.reason, e.detail, summary, events)
                continue
            action = ("would-write" if dry_run else "written") if result.changed else "unchanged"
            outcome = FileOutcome(
                item.path, action, removed=list(result.removed), target=result.target, written_to=result.written_to
            )
            outcome.warnings = list(result.warnings)
            summary.add(outcome)
            events.file(outcome)
            events.progress("write", 1)
            if result.changed and not dry_run:
                forget.append(path_key(item.path))
        if forget:
            store.forget_written(forget)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary
