"""``run_retag``: re-score cached vectors with new options and rewrite keywords where the chosen tags
changed. Never decodes an image and never loads the image tower."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtagx.cache.store import Store, fingerprint_file, open_store
from rtagx.errors import CacheError, ModelError, UsageError
from rtagx.model.encoder import Encoder, load_encoder, resolve_model
from rtagx.run.common import check_paths, open_locked, owning_root
from rtagx.run.events import RunEvents, RunSummary, Timer, report_skip
from rtagx.run.scan import ScannedFile
from rtagx.run.stages import FileWork
from rtagx.run.tagger import Tagger, handle_cached, root_settings
from rtagx.settings import Settings, load_settings, validate_settings
from rtagx.tags import vocab as vocab_mod


def run_retag(
    paths: Sequence[Path],
    overrides: dict[str, Any],
    *,
    dry_run: bool = False,
    events: RunEvents | None = None,
    config_path: Path | None = None,
    base_settings: Settings | None = None,
) -> RunSummary:
    """Re-score cached vectors with new options and rewrite keywords where the chosen tags changed.

    Never decodes an image and never loads the image tower. With no ``paths``, covers every root
    ``tag`` processed, each with the settings it was last tagged with unless ``overrides`` say else.
    """

    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    base = base_settings or load_settings(overrides, config_path=config_path)
    validate_settings(base)
    store = open_locked(base, events)
    try:
        roots = store.roots()
        targets: list[tuple[Path, dict[str, Any]]] = []
        if paths:
            for p in check_paths(paths):
                owner = owning_root(p, roots)
                targets.append((p, owner[1] if owner else {}))
        else:
            if not roots:
                raise UsageError(f"the cache {store.path} has no tagged folders yet: run `rtagx tag PATH` first")
            targets = [(p, s) for p, s, _ in roots]
        for target, remembered in targets:
            settings = load_settings(overrides, config_path=config_path, base=remembered)
            validate_settings(settings)
            retag_one(store, target, settings, remembered, summary, events, dry_run)
            if not dry_run and target.is_dir() and any(p == target for p, _, _ in roots):
                store.put_root(
                    target,
                    {
                        **root_settings(settings, remembered.get("model_key", "")),
                        "model_key": remembered.get("model_key", ""),
                    },
                )
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def retag_one(
    store: Store,
    target: Path,
    settings: Settings,
    remembered: dict[str, Any],
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
) -> None:
    vocabulary = vocab_mod.load_vocabulary(settings.tags)
    if settings.templates:
        vocabulary = vocab_mod.with_templates(vocabulary, settings.templates)
    model_key = remembered.get("model_key")
    row = store.conn.execute("SELECT id FROM models WHERE key = ?", (model_key,)).fetchone() if model_key else None
    if row is None:
        raise CacheError(f"no cached vectors for {target} (run `rtagx tag {target}` first)")
    model_id = int(row[0])
    tagger = Tagger(store, settings, vocabulary, model_id, model_key, events, summary, dry_run)

    def text_encoder() -> Encoder:
        with Timer(summary.timings, "load-model"):
            return cached_model_encoder(store, model_id, settings, text_only=True)

    tagger.prepare_text(text_encoder)
    dim = tagger.tag_matrix.shape[1] if tagger.tag_matrix is not None and tagger.tag_matrix.size else 0
    records = store.files_under(target)
    have = store.contents_with_vectors(model_id, [r.content_id for r in records.values()])
    works: list[FileWork] = []
    for key, rec in sorted(records.items()):
        summary.seen += 1
        path = Path(os.fsdecode(key))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            report_skip(
                path, "missing", "in the cache but no longer on disk (`rtagx cache prune` forgets it)", summary, events
            )
            continue
        except OSError as e:
            report_skip(path, "permission-denied", e.strerror or str(e), summary, events)
            continue
        if rec.content_id not in have:
            report_skip(path, "not-embedded", "no vector from this model yet (run `rtagx tag` on it)", summary, events)
            continue
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            try:
                same = store.content_for_fingerprint(fingerprint_file(path, st.st_size)) == rec.content_id
            except OSError:
                same = False
            if not same:
                report_skip(
                    path,
                    "changed",
                    "changed since it was embedded (run `rtagx tag` to embed it again)",
                    summary,
                    events,
                )
                continue
        works.append(FileWork(ScannedFile(path, st.st_size, st.st_mtime_ns, target), rec.content_id, rec.fingerprint))
    summary.reused += len(works)
    events.stage("write", len(works))
    handle_cached(tagger, works, dim)


def cached_model_encoder(store: Store, model_id: int, settings: Settings, *, text_only: bool) -> Encoder:
    """Load the model that made a cache's vectors (as the cache remembers it), text tower only when
    ``text_only``; a model whose files changed since is refused: its vectors would not match."""
    info = store.model_info(model_id)
    name = info.get("config_path") or info.get("name")
    pretrained = info.get("checkpoint_path") or info.get("pretrained")
    resolved = resolve_model(name, pretrained, offline=True if settings.offline else None)
    if resolved.identity.key != info["key"]:
        raise ModelError(
            f"the model that made the cached vectors ({name}, {pretrained}) has changed on disk; "
            f"run `rtagx tag` again to re-embed with it"
        )
    return load_encoder(resolved, device=settings.device, precision=settings.precision, text_only=text_only)


def known_roots(settings: Settings) -> set[Path]:
    """Folders ``tag`` has already processed with this cache (empty when there is no cache yet)."""
    path = settings.cache_path()
    if not path.exists():
        return set()
    try:
        with open_store(path, readonly=True) as store:
            return {p for p, _, _ in store.roots()}
    except CacheError:
        return set()
