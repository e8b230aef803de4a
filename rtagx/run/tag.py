"""``run_tag``: the whole line, scan -> diff with the cache -> decode -> encode -> store -> score -> write.

Everything that can stop a run (bad vocabulary, missing model, busy or broken cache, missing path) is
checked before the first file is touched."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rtagx.cache.store import FileRecord, Store, fingerprint_file
from rtagx.keywords import metadata
from rtagx.model.encoder import Encoder, ModelIdentity, ResolvedModel, load_encoder, resolve_model
from rtagx.model.loaded import LoadedModels
from rtagx.model.memo import remember_identity, remembered_identity
from rtagx.run.common import check_paths, open_locked
from rtagx.run.events import RunEvents, RunSummary, Timer, report_skip
from rtagx.run.local import embed
from rtagx.run.scan import ScannedFile, ScanProblem, iter_scan, selected_extensions
from rtagx.run.stages import FileWork, diff_with_cache, pair_raw_siblings
from rtagx.run.tagger import Tagger, handle_cached, root_settings, settle_unchanged
from rtagx.settings import Settings, validate_settings
from rtagx.tags import vocab as vocab_mod


def run_tag(
    paths: Sequence[Path],
    settings: Settings,
    *,
    dry_run: bool = False,
    events: RunEvents | None = None,
    models: LoadedModels | None = None,
) -> RunSummary:
    """Embed what is new, tag every file under ``paths``, write keywords. See module docstring.
    ``models`` keeps the model loaded from one call to the next (``rtagx watch``)."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    roots = check_paths(paths)
    vocabulary = vocab_mod.load_vocabulary(settings.tags)
    if settings.templates:
        vocabulary = vocab_mod.with_templates(vocabulary, settings.templates)

    resolved_box: list[ResolvedModel] = []

    def resolved() -> ResolvedModel:
        """The full resolution (imports open_clip, finds the weights): only when a model is needed."""
        if not resolved_box:
            with Timer(summary.timings, "resolve-model"):
                resolved_box.append(
                    (models.resolve if models else resolve_model)(
                        settings.model, settings.pretrained, offline=True if settings.offline else None
                    )
                )
        return resolved_box[0]

    if not settings.cache_path().exists():
        resolved()  # a bad model option fails before the cache file is even created
    store = open_locked(settings, events)
    try:
        identity = None if resolved_box else remembered_identity(store, settings.model, settings.pretrained)
        if identity is None:
            identity = resolved().identity
            remember_identity(store, settings.model, settings.pretrained, identity)
        load = models.load if models else load_encoder
        tag_with_store(store, roots, settings, vocabulary, identity, resolved, summary, events, dry_run, load)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def tag_with_store(
    store: Store,
    roots: list[Path],
    settings: Settings,
    vocabulary: vocab_mod.Vocabulary,
    identity: ModelIdentity,
    resolved: Callable[[], ResolvedModel],
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
    load: Callable[..., Encoder] = load_encoder,
) -> None:
    model_id = store.model_id(identity.key, identity.as_dict())
    tagger = Tagger(store, settings, vocabulary, model_id, identity.key, events, summary, dry_run)
    encoder_box: list[Encoder] = []

    def full_encoder() -> Encoder:
        if not encoder_box or not encoder_box[0].has_image_tower:
            with Timer(summary.timings, "load-model"):
                enc = load(
                    resolved(), device=settings.device, precision=settings.precision, threads=settings.threads or None
                )
            store.model_id(
                identity.key, identity.as_dict(), dim=None, logit_scale=enc.logit_scale, logit_bias=enc.logit_bias
            )
            encoder_box[:] = [enc]
        return encoder_box[0]

    # 1. scan and diff with the cache
    scanned: list[ScannedFile] = []
    with Timer(summary.timings, "scan"):
        events.stage("scan", 0)
        known: dict[bytes, FileRecord] = {}
        for root in roots:
            known.update(store.files_under(root))
        for item in iter_scan(
            roots,
            selected_extensions(settings),
            exclude=settings.exclude,
            include_hidden=settings.include_hidden,
            follow_symlinks=settings.follow_symlinks,
            on_temp_file=None if dry_run else metadata.clean_stale_temps,
        ):
            summary.seen += 1
            events.progress("scan", 1)
            if isinstance(item, ScanProblem):
                report_skip(item.path, item.reason, item.detail, summary, events)
                continue
            scanned.append(item)
    # 2. contents already embedded by this model?
    with Timer(summary.timings, "diff"):
        diff = diff_with_cache(store, model_id, scanned, known, dry_run=dry_run)
        for skip in diff.skipped:
            report_skip(skip.path, skip.reason, skip.detail, summary, events)
        work_cached, to_embed = diff.cached, diff.to_embed
        summary.reused = sum(1 for w in work_cached if w.reused)

    # Something must be embedded: find the model now (its weights may be missing), before any write.
    if to_embed:
        resolved()

    # 3. prompt vectors (the model is loaded here only if something needs it)
    def text_encoder() -> Encoder:
        if to_embed:
            return full_encoder()
        if not encoder_box:
            with Timer(summary.timings, "load-model"):
                encoder_box.append(
                    load(
                        resolved(),
                        device=settings.device,
                        precision=settings.precision,
                        text_only=True,
                        threads=settings.threads or None,
                    )
                )
            store.model_id(
                identity.key,
                identity.as_dict(),
                logit_scale=encoder_box[0].logit_scale,
                logit_bias=encoder_box[0].logit_bias,
            )
        return encoder_box[0]

    tagger.prepare_text(text_encoder)
    dim = tagger.tag_matrix.shape[1] if tagger.tag_matrix is not None and tagger.tag_matrix.size else 0

    # 4. files whose vectors are cached: score and write, in chunks. A file unchanged since rtagx
    #    wrote it under the same settings is settled without loading its vector or reading it.
    events.stage("write", len(work_cached) + len(to_embed))
    work_cached = settle_unchanged(tagger, work_cached)
    handle_cached(tagger, work_cached, dim)

    # 5. embed the rest: decode in a thread pool, encode in batches, store each batch, then write.
    #    A RAW file with a JPEG (or other) sibling of the same stem is not decoded: it takes the
    #    sibling's vector, so both get the same tags and the slow RAW decode is skipped.
    to_embed, followers = pair_raw_siblings(to_embed, work_cached)
    if to_embed:
        encoder = full_encoder()
        embed(tagger, encoder, to_embed, settings, summary, events, dry_run)
    orphans = tag_followers(tagger, followers, dim or 0)
    if orphans:
        embed(tagger, full_encoder(), orphans, settings, summary, events, dry_run)

    # 6. remember the root for retag
    if not dry_run:
        for root in roots:
            if root.is_dir():
                store.put_root(root, root_settings(settings, identity.key))


def tag_followers(tagger: Tagger, pairs: list[tuple[FileWork, FileWork]], dim: int) -> list[FileWork]:
    """Give each RAW file its sibling's vector, store it under the RAW's own content, tag it.
    Returns the RAW files whose sibling could not be embedded (they are embedded themselves)."""
    orphans: list[FileWork] = []
    store = tagger.store
    for raw, leader in pairs:
        if leader.content_id is None or not store.contents_with_vectors(tagger.model_id, [leader.content_id]):
            orphans.append(raw)
            continue
        vector = store.vectors(tagger.model_id, [leader.content_id], dim)
        try:
            fingerprint = raw.fingerprint or fingerprint_file(raw.file.path, raw.file.size)
        except OSError as e:
            report_skip(
                raw.file.path,
                "missing" if isinstance(e, FileNotFoundError) else "unreadable",
                e.strerror or str(e),
                tagger.summary,
                tagger.events,
            )
            continue
        row = (raw.file.path, raw.file.size, raw.file.mtime_ns, fingerprint)
        (cid,) = store.put_files([row])
        store.put_vectors(tagger.model_id, [cid], vector, [row])
        raw.content_id, raw.fingerprint, raw.reused = cid, fingerprint, True
        tagger.summary.reused += 1
        tagger.handle([raw], vector, embedded=False)
    return orphans
