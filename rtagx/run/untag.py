"""``run_untag``: remove exactly the keywords rtagx wrote (and its private record)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from rtagx.cache.store import FileRow, path_key
from rtagx.errors import FileSkip
from rtagx.keywords import metadata
from rtagx.run.common import check_paths, open_locked, owning_root, written_place
from rtagx.run.events import FileOutcome, RunEvents, RunSummary, report_skip
from rtagx.run.scan import ScanProblem, scan_with_settings
from rtagx.run.stages import same_identity
from rtagx.settings import Settings, validate_settings


def run_untag(
    paths: Sequence[Path], settings: Settings, *, dry_run: bool = False, events: RunEvents | None = None
) -> RunSummary:
    """Remove exactly the keywords rtagx wrote (and its private record) from files under ``paths``.

    Each file is untagged where rtagx wrote it (embedded, a sidecar of the style used, a caption with
    the extension used), as recorded in the cache, unless the options given say otherwise. Afterwards
    the cache knows the files' new identity (their vectors stay), forgets what it wrote, and forgets
    the roots untagged whole. A path untagged inside a root is remembered: later runs over the root
    (``retag``, ``tag`` of the root, ``watch``) leave it alone until ``tag`` is asked for it again."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    roots = check_paths(paths)
    store = open_locked(settings, events)
    forget: list[bytes] = []
    moved: list[FileRow] = []
    moved_ids: list[int | None] = []
    inside: list[tuple[Path, Path]] = []  # (path untagged inside a root, that root)
    try:
        remembered_roots = store.roots()
        for p in roots:
            owner = owning_root(p.parent, remembered_roots) if p.parent != p else None
            if owner is not None:
                inside.append((p, owner[0]))
        events.stage("write", 0)
        for item in scan_with_settings(roots, settings):
            summary.seen += 1
            if isinstance(item, ScanProblem):
                report_skip(item.path, item.reason, item.detail, summary, events)
                continue
            key = path_key(item.path)
            where = written_place(settings, store.written([key]).get(key), owning_root(item.path, remembered_roots))
            try:
                result = metadata.remove_own_keywords(
                    item.path,
                    target=where["write"],
                    sidecar_style=where["sidecar_style"],
                    caption_ext=where["caption_ext"],
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
            if dry_run:
                continue
            forget.append(key)
            rec = store.file(item.path)
            if result.changed and rec is not None and same_identity(rec, item):
                # only metadata changed: the cached vector still describes the file under its new identity
                with contextlib.suppress(OSError):
                    st = os.stat(item.path)
                    moved.append(
                        FileRow(item.path, st.st_size, st.st_mtime_ns, rec.fingerprint, st.st_ctime_ns, st.st_ino)
                    )
                    moved_ids.append(rec.content_id)
        if not dry_run:
            store.forget_roots([r for r, _, _ in remembered_roots if any(r == p or p in r.parents for p in roots)])
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        try:
            if not dry_run:  # what was untagged before a Ctrl-C is recorded too
                store.forget_written(forget)
                store.put_files(moved, moved_ids, alias=False)
                store.set_untagged([p for p, _ in inside], True)
        finally:
            store.close()
        summary.wall_seconds = time.perf_counter() - started
    for p, root in inside if not dry_run else []:
        events.message(f"{p} stays untagged: later runs over {root} leave it alone; `rtagx tag {p}` tags it again")
    return summary
