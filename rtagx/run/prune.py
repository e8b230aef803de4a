"""``prune_cache``: forget deleted files and roots, vectors no file uses, and (optionally) other models."""

from __future__ import annotations

from collections.abc import Sequence

from rtagx.cache.thumbs import prune_thumbnails, thumbs_dir
from rtagx.errors import UsageError
from rtagx.run.common import open_locked
from rtagx.run.events import RunEvents
from rtagx.settings import Settings


def prune_cache(
    settings: Settings, keep_models: Sequence[str] = (), *, dry_run: bool = False, events: RunEvents | None = None
) -> dict[str, int]:
    """Prune the cache under the writer lock, taken before the cache is opened (and perhaps migrated):
    a prune never races a running ``tag``. ``keep_models`` names models (by name or identity key) whose
    vectors stay; with none given, every model's vectors stay. Returns what was (or would be) removed."""
    if not settings.cache_path().exists():
        raise UsageError(f"there is no cache at {settings.cache_path()} yet: nothing to prune")
    with open_locked(settings, events or RunEvents()) as store:
        keep = None
        if keep_models:
            keep = [m["id"] for m in store.models() if m.get("name") in keep_models or m["key"] in keep_models]
            if not keep:
                raise UsageError(f"no model named {', '.join(keep_models)} in the cache (see `rtagx cache stats`)")
        counts = store.prune(keep_models=keep, dry_run=dry_run)
        # review thumbnails are made again on demand: a prune empties their folder
        counts["thumbnails"] = prune_thumbnails(thumbs_dir(settings.cache_path()), 0, dry_run=dry_run)[0]
        return counts
