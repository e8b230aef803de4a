"""``run_tag``: the whole line, scan -> diff with the cache -> decode -> encode -> store -> score -> write.

Everything that can stop a run (bad vocabulary, missing model, busy or broken cache, missing path) is
checked before the first file is touched."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rtagx.cache.store import FileRecord, Store, is_untagged, path_key
from rtagx.keywords import metadata
from rtagx.model.encoder import Encoder, ModelIdentity, ResolvedModel, load_encoder, resolve_model
from rtagx.model.loaded import LoadedModels
from rtagx.model.memo import remember_identity, remembered_identity
from rtagx.run.common import check_paths, load_vocabulary_for, open_locked, untagged_marks
from rtagx.run.events import RunEvents, RunSummary, Timer, add_time, report_skip
from rtagx.run.local import embed
from rtagx.run.scan import ScannedFile, ScanProblem, scan_with_settings, selected_extensions
from rtagx.run.stages import FileWork, Skip, diff_with_cache, file_row, fingerprint_or_skip, pair_raw_siblings
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
    clear_untagged: bool = False,
    extra_models: Sequence[tuple[str, str]] = (),
) -> RunSummary:
    """Embed what is new, tag every file under ``paths``, write keywords. See module docstring.
    ``models`` keeps the model loaded from one call to the next (``rtagx watch``). Files ``untag``
    cleared inside a root are left alone, unless ``clear_untagged`` and ``paths`` lie inside them.
    ``extra_models`` (name, pretrained): further models, each run first over the same files (its
    vectors stored under its own identity, its keywords collected); the first model's pass then
    writes the union of all keywords once per file."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    selected_extensions(settings)  # an unknown --ext is a usage error before anything runs
    roots = check_paths(paths)
    vocabulary = load_vocabulary_for(settings)

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
        extra = [
            extra_pass(store, roots, settings, vocabulary, name, pretrained, summary, events, dry_run, clear_untagged)
            for name, pretrained in extra_models
        ]
        tag_with_store(
            store,
            roots,
            settings,
            vocabulary,
            identity,
            resolved,
            summary,
            events,
            dry_run,
            load,
            clear_untagged,
            extra=extra,
        )
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
    clear_untagged: bool = False,
    *,
    extra: Sequence[Tagger] = (),
    collect: bool = False,
) -> Tagger:
    model_id = store.model_id(identity.key, identity.as_dict())
    tagger = Tagger(store, settings, vocabulary, model_id, identity.key, events, summary, dry_run)
    tagger.extra = list(extra)
    tagger.several_models = collect or bool(extra)
    if collect:
        tagger.collect = {}
    encoder_box: list[Encoder] = []

    def full_encoder() -> Encoder:
        if not encoder_box or not encoder_box[0].has_image_tower:
            with Timer(summary.timings, "load-model"):
                enc = load(
                    resolved(),
                    device=settings.device,
                    precision=settings.precision,
                    threads=settings.threads or None,
                    cpu_bf16=settings.cpu_bf16,
                    cpu_backend=settings.cpu_backend,
                    compile_dir=settings.cache_path().parent / "compiled",
                )
            store.model_id(
                identity.key, identity.as_dict(), dim=None, logit_scale=enc.logit_scale, logit_bias=enc.logit_bias
            )
            encoder_box[:] = [enc]
        return encoder_box[0]

    # 0. remember the roots now: an interrupted first run is a root all the same (for `retag`,
    #    `cache stats` and the first-write question). A folder's run takes over the roots inside it.
    if not dry_run and not collect:
        remember = root_settings(settings, identity.key)
        if extra:
            remember["extra_models"] = [[t.settings.model, t.settings.pretrained, t.model_key] for t in extra]
        for root in roots:
            store.put_root(root, remember, replace_nested=root.is_dir())

    # 1. scan and diff with the cache
    scanned: list[ScannedFile] = []
    with Timer(summary.timings, "scan"):
        events.stage("scan", 0)
        known: dict[bytes, FileRecord] = {}
        failures: dict[bytes, tuple[int, int, str, str]] = {}
        # a run that writes no keyword (explain, eval, --write none) has nothing to keep out of them
        untagged = (
            untagged_marks(store, roots, clear=clear_untagged, dry_run=dry_run) if settings.write != "none" else {}
        )
        for root in roots:
            known.update(store.files_under(root))
            failures.update(store.failures_under(root))
        for item in scan_with_settings(roots, settings, on_temp_file=None if dry_run else metadata.clean_stale_temps):
            if untagged and is_untagged(path_key(item.path), untagged):
                summary.left_untagged += 1
                continue
            summary.seen += 1
            events.progress("scan", 1)
            if isinstance(item, ScanProblem):
                report_skip(item.path, item.reason, item.detail, summary, events)
                continue
            scanned.append(item)
    # 2. contents already embedded by this model?
    with Timer(summary.timings, "diff"):
        diff = diff_with_cache(
            store, model_id, scanned, known, failures=failures, rehash=settings.rehash, dry_run=dry_run
        )
        for skip in diff.skipped:
            report_skip(skip.path, skip.reason, skip.detail, summary, events)
        # A RAW file with a JPEG (or other) sibling of the same stem is not decoded: it takes the
        # sibling's vector, so both get the same tags and the slow RAW decode is skipped.
        followers = pair_raw_siblings(store, model_id, diff, dry_run=dry_run)
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
                        cpu_bf16=settings.cpu_bf16,
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
    dim = tagger.vector_dim()

    # 4. files whose vectors are cached: score and write, in chunks. A file unchanged since rtagx
    #    wrote it under the same settings is settled without loading its vector or reading it.
    events.stage("write", len(work_cached) + len(to_embed))
    work_cached = settle_unchanged(tagger, work_cached)
    handle_cached(tagger, work_cached, dim)

    # 5. embed the rest: decode in a thread pool, encode in batches, store each batch, then write.
    if to_embed:
        encoder = full_encoder()
        encoder.plan(len(to_embed))
        embed(tagger, encoder, to_embed, settings, summary, events, dry_run)
        note_backend(summary, encoder)
    orphans = tag_followers(tagger, followers, dim or 0)
    if orphans:
        encoder = full_encoder()
        encoder.plan(len(orphans))
        embed(tagger, encoder, orphans, settings, summary, events, dry_run)
        note_backend(summary, encoder)
    return tagger


def note_backend(summary: RunSummary, encoder: Encoder) -> None:
    """Record which CPU backend encoded (eager until a faster one was ready) and why it fell back."""
    if encoder.device != "cpu" or not encoder.has_image_tower:
        return
    used = encoder.backend
    encoder.wait_backend()  # a preparation still running finishes (and is kept on disk) before exit
    summary.encoder_backend = used
    if used != encoder.cpu_backend and encoder.backend_started:
        summary.encoder_backend += f" ({encoder.cpu_backend} was not ready yet)"
    # not started: a small job with no tower on disk yet (a run of >= BACKEND_MIN_IMAGES makes one)
    if encoder.backend_note:
        summary.encoder_backend += f" ({encoder.backend_note})"


def extra_pass(
    store: Store,
    roots: list[Path],
    settings: Settings,
    vocabulary: vocab_mod.Vocabulary,
    name: str,
    pretrained: str,
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
    clear_untagged: bool,
) -> Tagger:
    """One further model's pass over the files: embed what its cache lacks, collect each file's
    keywords (written later by the first model's pass). Its files are counted once, by that pass:
    only its embeddings and timings join ``summary``."""
    own = dataclasses.replace(settings, model=name, pretrained=pretrained)
    identity = remembered_identity(store, name, pretrained)
    if identity is None:
        identity = resolve_model(name, pretrained, offline=True if settings.offline else None).identity
        if not dry_run:
            remember_identity(store, name, pretrained, identity)
    box: list[ResolvedModel] = []

    def resolved() -> ResolvedModel:
        if not box:
            box.append(resolve_model(name, pretrained, offline=True if settings.offline else None))
        return box[0]

    scratch = RunSummary(dry_run=dry_run)
    tagger = tag_with_store(
        store,
        roots,
        own,
        vocabulary,
        identity,
        resolved,
        scratch,
        RunEvents(),
        dry_run,
        load_encoder,
        clear_untagged,
        collect=True,
    )
    summary.embedded += scratch.embedded
    for stage, seconds in scratch.timings.items():
        add_time(summary.timings, stage, seconds)  # the encode rate counts every model's images
    tagger.summary = summary
    return tagger


def tag_followers(tagger: Tagger, pairs: list[tuple[FileWork, FileWork]], dim: int) -> list[FileWork]:
    """Give each RAW file its sibling's vector and tag it. The RAW's file row points at the sibling's
    content; its own fingerprint is not aliased to it, so a copy of the RAW elsewhere, without the
    sibling, is not given this vector. Returns the RAW files whose sibling could not be embedded
    (they are embedded themselves)."""
    orphans: list[FileWork] = []
    store = tagger.store
    for raw, leader in pairs:
        if leader.content_id is None or not store.contents_with_vectors(tagger.model_id, [leader.content_id]):
            raw.content_id, raw.reused = None, False
            orphans.append(raw)
            continue
        fingerprint = raw.fingerprint or fingerprint_or_skip(raw.file)
        if isinstance(fingerprint, Skip):
            report_skip(fingerprint.path, fingerprint.reason, fingerprint.detail, tagger.summary, tagger.events)
            continue
        vector = store.vectors(tagger.model_id, [leader.content_id], dim)
        if not tagger.dry_run:
            store.put_files([file_row(raw.file, fingerprint)], [leader.content_id], alias=False)
        raw.content_id, raw.fingerprint, raw.reused = leader.content_id, fingerprint, True
        tagger.summary.reused += 1
        tagger.handle([raw], vector, embedded=False)
    return orphans
