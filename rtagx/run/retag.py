"""``run_retag``: re-score cached vectors with new options and rewrite keywords where the chosen tags
changed. Never decodes an image and never loads the image tower."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rtagx.cache.store import FileRecord, FileRow, Store, is_untagged, key_path, open_store, path_key
from rtagx.errors import CacheError, ModelError, UsageError
from rtagx.model.encoder import Encoder, load_encoder, resolve_model
from rtagx.run.common import check_paths, load_vocabulary_for, open_locked, owning_root
from rtagx.run.events import RunEvents, RunSummary, Timer, report_skip
from rtagx.run.scan import ScannedFile
from rtagx.run.stages import FileWork, Skip, file_row, fingerprint_or_skip, same_identity
from rtagx.run.tagger import Tagger, absolute_if_file, handle_cached, root_settings
from rtagx.settings import Settings, load_settings, validate_settings, where


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
    ``tag`` processed. Each file is re-scored once, with the settings of the deepest root that holds
    it (a folder tagged inside another keeps its own vocabulary) unless ``overrides`` say else.
    """

    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    base = base_settings or load_settings(overrides, config_path=config_path)
    validate_settings(base)
    if not base.cache_path().exists():
        raise UsageError(f"no tagged folders yet: there is no cache at {base.cache_path()}; run `rtagx tag PATH` first")
    scopes = check_paths(paths) if paths else []
    store = open_locked(base, events)
    try:
        roots = store.roots()
        if not paths:
            if not roots:
                raise UsageError(f"the cache {store.path} has no tagged folders yet: run `rtagx tag PATH` first")
            scopes = [p for p, _, _ in roots]
        groups = group_by_root(store, scopes, roots, strict=bool(paths), summary=summary)
        untagged = store.untagged_marks() if paths else {}
        for scope in scopes if untagged else []:
            if is_untagged(path_key(scope), untagged):
                events.message(f"{scope} stays untagged (`rtagx untag`): `rtagx tag {scope}` tags it again")
        root_paths = {p for p, _, _ in roots}
        for owner, (remembered, records) in groups.items():
            settings = load_settings(overrides, config_path=config_path, base=remembered)
            validate_settings(settings)
            differs = [
                k
                for k in ("model", "pretrained")
                if remembered and absolute_if_file(getattr(settings, k)) != absolute_if_file(remembered.get(k))
            ]
            if differs and owner is not None:  # retag never embeds: it can only use the vectors the folder has
                events.message(
                    f"{owner}: retag re-scores the vectors of {remembered.get('model')} "
                    f"({remembered.get('pretrained')}), the model it was last tagged with, not "
                    f"{settings.model} ({settings.pretrained}) from {where(settings, differs[0])}; "
                    f"`rtagx tag {owner}` embeds it with that model"
                )
            retag_files(store, records, settings, remembered, summary, events, dry_run)
            if not dry_run and owner is not None and owner in root_paths and owner in scopes:
                remember = root_settings(settings, remembered.get("model_key", ""))
                if remembered.get("extra_models"):
                    remember["extra_models"] = remembered["extra_models"]
                store.put_root(owner, remember)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def group_by_root(
    store: Store,
    scopes: Sequence[Path],
    roots: list[tuple[Path, dict[str, Any], float]],
    *,
    strict: bool = True,
    summary: RunSummary | None = None,
) -> dict[Path | None, tuple[dict[str, Any], dict[bytes, FileRecord]]]:
    """The cached files under ``scopes``, each once, grouped by the deepest root that holds it.
    Files under a path ``untag`` cleared inside a root are left out (counted in ``summary``).

    Files no root holds (tagged one at a time by an older rtagx, or untagged since) form the group
    ``None``, with the model their recorded keywords came from (or the only model with their vector).
    With ``strict``, a scope with no cached file is an error; without (the remembered roots), it is
    passed over: a root whose first run stopped before any file was stored holds nothing yet."""
    groups: dict[Path | None, tuple[dict[str, Any], dict[bytes, FileRecord]]] = {}
    untagged = store.untagged_marks()
    left_alone: set[bytes] = set()
    for scope in scopes:
        records = store.files_under(scope)
        if not records and strict:
            raise CacheError(f"no cached vectors for {scope} (run `rtagx tag {scope}` first)")
        for key, rec in records.items():
            if untagged and is_untagged(key, untagged):
                left_alone.add(key)
                continue
            owner = owning_root(key_path(key), roots)
            group = groups.setdefault(owner[0] if owner else None, (owner[1] if owner else {}, {}))
            group[1][key] = rec
    if summary is not None:
        summary.left_untagged += len(left_alone)
    orphans = groups.pop(None, None)
    if orphans:
        written = store.written(orphans[1])
        # a file with no record of what was written (untagged since): the model that has its vector,
        # when only one has
        content_ids = [rec.content_id for rec in orphans[1].values()]
        holders: dict[int, list[int]] = {}
        for model in store.models():
            for cid in store.contents_with_vectors(model["id"], content_ids):
                holders.setdefault(cid, []).append(model["id"])
        for key, rec in orphans[1].items():
            candidates = holders.get(rec.content_id, [])
            model_id = written[key].model_id if key in written else (candidates[0] if len(candidates) == 1 else None)
            remembered = {"model_key": store.model_info(model_id)["key"]} if model_id is not None else {}
            groups.setdefault(None, (remembered, {}))
            if groups[None][0] == remembered:
                groups[None][1][key] = rec
            else:  # a second model among the orphans: its own group, keyed by a path of its own
                groups.setdefault(key_path(key), (remembered, {}))[1][key] = rec
    return groups


def retag_files(
    store: Store,
    records: dict[bytes, FileRecord],
    settings: Settings,
    remembered: dict[str, Any],
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
) -> None:
    """Re-score and write one group of cached files, all under the same settings and model."""
    vocabulary = load_vocabulary_for(settings)
    model_key = remembered.get("model_key")
    model_id = store.find_model(model_key) if model_key else None
    if model_id is None:
        for key in sorted(records):
            summary.seen += 1
            report_skip(
                key_path(key), "not-embedded", "no vector recorded for it (run `rtagx tag` on it)", summary, events
            )
        return
    tagger = Tagger(store, settings, vocabulary, model_id, model_key or "", events, summary, dry_run)
    tagger.several_models = bool(remembered.get("extra_models"))

    def text_encoder() -> Encoder:
        with Timer(summary.timings, "load-model"):
            return cached_model_encoder(store, model_id, settings, text_only=True)

    tagger.prepare_text(text_encoder)
    dim = tagger.vector_dim()
    have = store.contents_with_vectors(model_id, [r.content_id for r in records.values()])
    works: list[FileWork] = []
    moved: list[FileRow] = []
    moved_ids: list[int | None] = []
    for key, rec in sorted(records.items()):
        summary.seen += 1
        path = key_path(key)
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
        item = ScannedFile(path, st.st_size, st.st_mtime_ns, path.parent, st.st_ctime_ns, st.st_ino)
        if not same_identity(rec, item):
            # touched since: keep the vector only if the image data is the same (a keyword edit)
            fingerprint = fingerprint_or_skip(item)
            if isinstance(fingerprint, Skip):
                report_skip(fingerprint.path, fingerprint.reason, fingerprint.detail, summary, events)
                continue
            if fingerprint != rec.fingerprint and store.content_for_fingerprint(fingerprint) != rec.content_id:
                report_skip(
                    path,
                    "changed",
                    "its image data changed since it was embedded (run `rtagx tag` to embed it again)",
                    summary,
                    events,
                )
                continue
            moved.append(file_row(item, fingerprint))
            moved_ids.append(rec.content_id)
        works.append(FileWork(item, rec.content_id, rec.fingerprint))
    if moved and not dry_run:
        store.put_files(moved, moved_ids, alias=False)
    summary.reused += len(works)
    tagger.extra = extra_taggers(store, works, settings, vocabulary, remembered, summary, events, dry_run)
    events.stage("write", len(works))
    handle_cached(tagger, works, dim)


def extra_taggers(
    store: Store,
    works: list[FileWork],
    settings: Settings,
    vocabulary: Any,
    remembered: dict[str, Any],
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
) -> list[Tagger]:
    """A root tagged with several models: re-score with each further model it remembers and collect
    each file's keywords, for the first model's tagger to unite and write."""
    out: list[Tagger] = []
    for name, pretrained, key in remembered.get("extra_models") or ():
        model_id = store.find_model(key)
        if model_id is None:
            raise CacheError(f"the cache has no vectors of {name} ({pretrained}): run `rtagx tag` again")
        own = dataclasses.replace(settings, model=name, pretrained=pretrained)
        tagger = Tagger(store, own, vocabulary, model_id, key, events, summary, dry_run)
        tagger.collect = {}
        tagger.several_models = True

        def text_encoder(model_id: int = model_id, own: Settings = own) -> Encoder:
            with Timer(summary.timings, "load-model"):
                return cached_model_encoder(store, model_id, own, text_only=True)

        tagger.prepare_text(text_encoder)
        have = store.contents_with_vectors(model_id, [w.content_id for w in works if w.content_id is not None])
        handle_cached(tagger, [w for w in works if w.content_id in have], tagger.vector_dim())
        out.append(tagger)
    return out


def cached_model_encoder(store: Store, model_id: int, settings: Settings, *, text_only: bool) -> Encoder:
    """Load the model that made a cache's vectors (as the cache remembers it), text tower only when
    ``text_only``; a model whose files changed since is refused: its vectors would not match."""
    info = store.model_info(model_id)
    name = str(info.get("config_path") or info.get("name") or "")
    pretrained = info.get("checkpoint_path") or info.get("pretrained")
    resolved = resolve_model(name, pretrained, offline=True if settings.offline else None)
    if resolved.identity.key != info["key"]:
        raise ModelError(
            f"the model that made the cached vectors ({name}, {pretrained}) has changed on disk; "
            f"run `rtagx tag` again to re-embed with it"
        )
    return load_encoder(
        resolved, device=settings.device, precision=settings.precision, text_only=text_only, cpu_bf16=settings.cpu_bf16
    )


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
