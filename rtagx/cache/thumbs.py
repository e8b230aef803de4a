"""The thumbnail folder beside the cache (``<cache>.thumbs``), written by ``rtagx review``: JPEGs named
by content fingerprint and size, bounded in bytes (least recently used first out), emptied by
``rtagx cache prune`` (they are made again on demand)."""

from __future__ import annotations

import os
from pathlib import Path


def thumbs_dir(cache: Path) -> Path:
    return cache.parent / (cache.name + ".thumbs")


def thumbnail_bytes(folder: Path) -> int:
    try:
        return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
    except OSError:
        return 0


def prune_thumbnails(folder: Path, keep_bytes: int = 0, *, dry_run: bool = False) -> tuple[int, int]:
    """Delete the least recently used thumbnails until at most ``keep_bytes`` remain: (files removed,
    bytes left)."""
    try:
        entries = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return 0, 0
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries):
        if total <= keep_bytes:
            break
        try:
            if not dry_run:
                os.unlink(path)
            total -= size
            removed += 1
        except OSError:
            pass
    return removed, total
