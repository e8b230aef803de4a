"""Small helpers every run shares: checking the paths given, opening the cache under the writer lock,
loading the vocabulary, and finding the root a file belongs to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtagx.cache.store import Store, WriterLock, WrittenRecord, open_store, path_key, with_mark
from rtagx.errors import CacheError, UsageError
from rtagx.run.events import RunEvents
from rtagx.settings import CHOICES, Settings
from rtagx.tags import vocab as vocab_mod


def load_vocabulary_for(settings: Settings) -> vocab_mod.Vocabulary:
    """The vocabulary a run scores with: ``--tags`` with ``--templates`` applied (one place, so that
    ``tag``, ``retag``, ``show`` and the analysis commands score exactly alike)."""
    vocabulary = vocab_mod.load_vocabulary(settings.tags)
    if settings.templates:
        vocabulary = vocab_mod.with_templates(vocabulary, settings.templates)
    return vocabulary


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


def written_place(
    settings: Settings, written: WrittenRecord | None, owner: tuple[Path, dict[str, Any]] | None
) -> dict[str, str]:
    """Where rtagx wrote a file's keywords: the options given, else what the cache recorded for the
    file (its target) and its root (sidecar style, caption extension), else the defaults."""
    remembered = owner[1] if owner else {}
    out: dict[str, str] = {}
    for name in ("write", "sidecar_style", "caption_ext"):
        value = getattr(settings, name)
        if settings.sources.get(name, "default") == "default":
            if name == "write" and written is not None and written.target in CHOICES["write"]:
                value = written.target
            else:
                value = remembered.get(name) or value
        out[name] = value
    if out["write"] == "none":
        out["write"] = "auto"
    return out


def untagged_marks(store: Store, paths: Sequence[Path], *, clear: bool, dry_run: bool) -> dict[bytes, bool]:
    """The paths ``untag`` cleared inside a root, which a run over ``paths`` leaves alone (see
    ``Store.untagged_marks``). ``clear``: a person named ``paths`` (``rtagx tag``, not ``watch``):
    each path that lies at or inside an untagged one is tagged again (recorded unless ``dry_run``)."""
    if not clear:
        return store.untagged_marks()
    if not dry_run:
        return store.set_untagged(paths, False)
    marks = store.untagged_marks()
    for p in paths:
        marks = with_mark(marks, path_key(p), False)
    return marks
