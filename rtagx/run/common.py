"""Small helpers every run shares: checking the paths given, opening the cache under the writer lock,
and finding the root a file belongs to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtagx.cache.store import Store, WriterLock, open_store
from rtagx.errors import CacheError, UsageError
from rtagx.run.events import RunEvents
from rtagx.settings import Settings


def check_paths(paths: Sequence[Path]) -> list[Path]:
    if not paths:
        raise UsageError("no paths given: rtagx tag PATH... (a folder or image files)")
    out = []
    for p in paths:
        p = Path(os.path.abspath(os.path.expanduser(p)))
        if not os.path.lexists(p):
            raise UsageError(f"path not found: {p}")
        if not os.access(p, os.R_OK):
            raise UsageError(f"path not readable: {p}")
        out.append(p)
    return out


def open_locked(settings: Settings, events: RunEvents) -> Store:
    """Take the writer lock first, then open (and create or migrate) the cache: two runs started at
    the same moment on a new cache must not both try to create its tables."""
    path = settings.cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create the cache folder {path.parent}: {e.strerror or e}") from None
    lock = WriterLock(path)
    lock.acquire(wait=not settings.no_wait, on_wait=events.on_wait_lock)
    try:
        store = open_store(path)
    except BaseException:
        lock.release()
        raise
    store.lock = lock
    return store


def owning_root(path: Path, roots: list[tuple[Path, dict[str, Any], float]]) -> tuple[Path, dict[str, Any]] | None:
    """The deepest remembered root that holds ``path``, with its settings."""
    best = None
    for root, s, _ in roots:
        if (path == root or root in path.parents) and (best is None or len(str(root)) > len(str(best[0]))):
            best = (root, s)
    return best
