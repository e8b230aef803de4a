"""``run_tag``: the whole line, scan -> diff with the cache -> decode -> encode -> store -> score -> write.

Everything that can stop a run (bad vocabulary, missing model, busy or broken cache, missing path) is
checked before the first file is touched."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import Failure, FileRecord, Store, is_untagged, path_key
from rtagx.errors import FileSkip
from rtagx.imaging import decode
from rtagx.keywords import metadata
from rtagx.model.encoder import Encoder, ModelIdentity, ResolvedModel, load_encoder, resolve_model
from rtagx.model.loaded import LoadedModels
from rtagx.model.memo import remember_identity, remembered_identity
from rtagx.run.common import check_paths, load_vocabulary_for, open_locked, untagged_marks
from rtagx.run.events import RunEvents, RunSummary, Timer, add_time, report_skip
from rtagx.run.local import STUCK_DECODERS, default_workers, embed
from rtagx.run.scan import ScannedFile, ScanProblem, scan_with_settings, selected_extensions
from rtagx.run.stages import (
    FileWork,
    Skip,
    decode_for_models,
    diff_with_cache,
    file_row,
    fingerprint_or_skip,
    pair_raw_siblings,
)
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
    ``extra_models`` (name, pretrained): further models over the same files (the CLI passes
    ``settings.extra_models``; ``watch`` none), each file decoded once for all of them, each model's
    vectors stored under its own identity; the first model's pass writes the union of all keywords
    once per file (:func:`run_several`)."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    selected_extensions(settings)  # an unknown --ext is a usage error before anything runs
    roots = check_paths(paths)
    vocabulary = load_vocabulary_for(settings)
    if settings.engine == "ray":  # Ray missing is one line before anything runs; the cluster is joined
        from rtagx.run.ray_engine import import_ray  # only when something needs embedding

        import_ray()

    resolved_box: list[ResolvedModel] = []
    preload: list[ModelPreload] = []

    def resolved() -> ResolvedModel:
        """The full resolution (imports open_clip, finds the weights): only when a model is needed."""
        if not resolved_box:
            offline = True if settings.offline else None
            with Timer(summary.timings, "resolve-model"):
                if not preload and models is None and not extra_models and not dry_run and settings.engine == "local":
                    preload.extend(ModelPreload.start(settings, offline))
                resolved_box.append(
                    (models.resolve if models else resolve_model)(settings.model, settings.pretrained, offline=offline)
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
        if preload:
            load = preload[0].loader(load)
        if extra_models:
            run_several(
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
                extra_models,
            )
        else:
            tag_with_store(
                store, roots, settings, vocabulary, identity, resolved, summary, events, dry_run, load, clear_untagged
            )
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        if preload:
            preload[0].settle()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def encoder_options(settings: Settings, text_only: bool) -> dict[str, Any]:
    """The keyword arguments a run loads its model with (the text tower alone, or the whole model
    with its CPU backend and the folder that keeps compiled towers)."""
    options: dict[str, Any] = {
        "device": settings.device,
        "precision": settings.precision,
        "threads": settings.threads or None,
        "cpu_bf16": settings.cpu_bf16,
    }
    if text_only:
        options["text_only"] = True
    else:
        options.update(cpu_backend=settings.cpu_backend, compile_dir=settings.cache_path().parent / "compiled")
    return options


class ModelPreload:
    """A first run (no cache yet, or weights changed since the cache last saw them) hashes the whole
    checkpoint to know the model's identity (~0.7 s for ViT-B-16's 600 MB) before it can ask the
    cache anything, and then loads the same file (~1.2-1.5 s): both mostly on one core. The model is
    loaded in a background thread from the located weights while the main thread hashes them, scans
    and diffs; the run takes the loaded model when it needs it (or waits for the rest of the load).
    Only for a CLIP model on the local engine: a run that ends up embedding nothing only loaded its
    model early, and waits for that load before it returns (a process must not exit inside torch)."""

    def __init__(self, located: ResolvedModel, options: dict[str, Any]) -> None:
        self.located = located
        self.options = options
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtagx-preload")
        self.future: Future[Encoder] = self._pool.submit(load_encoder, located, **options)

    @classmethod
    def start(cls, settings: Settings, offline: bool | None) -> list[ModelPreload]:
        """A preload of ``settings``' model, or none (not a CLIP model, or its weights not found:
        the real resolution says why)."""
        try:
            located = resolve_model(settings.model, settings.pretrained, offline=offline, digest=_no_digest)
        except Exception:
            return []
        if located.identity.kind != "clip":
            return []
        return [cls(located, encoder_options(settings, text_only=False))]

    def loader(self, load: Callable[..., Encoder]) -> Callable[..., Encoder]:
        """``load`` that hands out the preloaded model for the same weights and options, with the
        identity the real resolution found."""

        def load_or_take(resolved: ResolvedModel, **options: Any) -> Encoder:
            same = _built_from(resolved) == _built_from(self.located)
            # the whole model serves a run that wanted only its text tower just as well
            wanted = {k: v for k, v in options.items() if k != "text_only"}
            fits = wanted == self.options or (options.get("text_only") and wanted.items() <= self.options.items())
            if not same or not fits or self.future.cancelled():
                return load(resolved, **options)
            encoder = self.future.result()  # raises what the load raised (a damaged checkpoint)
            encoder.resolved, encoder.identity = resolved, resolved.identity
            return encoder

        return load_or_take

    def settle(self) -> None:
        """Cancel the load if it has not started; else wait for it (its result is dropped if unused)."""
        self.future.cancel()
        self._pool.shutdown(wait=True)


def _built_from(resolved: ResolvedModel) -> tuple[Any, ...]:
    """What a model is built from (everything but its identity)."""
    r = resolved
    return (r.open_clip_name, r.checkpoint_file, r.force_quick_gelu, r.preprocess_overrides, r.model_cfg)


def _no_digest(path: Path) -> str:
    """Locating a model without hashing its files (the identity it gives is not used)."""
    return ""


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
    """One model's whole pass: plan it (scan, diff, prompts), then score the cached files and embed
    the rest."""
    planned = plan_pass(
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
        collect=collect,
    )
    finish_cached(planned)
    if planned.to_embed:
        embed_works(planned, planned.to_embed)
    finish_followers(planned)
    return planned.tagger


@dataclass
class ModelPass:
    """One model's share of a run once planned: what its cache has (``cached``), what it must embed
    (``to_embed``), RAW files that follow a sibling, and how to load its image tower."""

    tagger: Tagger
    cached: list[FileWork]
    to_embed: list[FileWork]
    followers: list[tuple[FileWork, FileWork]]
    dim: int
    full_encoder: Callable[[], Encoder]
    resolved: Callable[[], ResolvedModel]
    label: str = ""


def plan_pass(
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
) -> ModelPass:
    """Scan, diff with this model's cache and prepare its prompt vectors; nothing is decoded yet, so
    that several models can share one decode of each file (:func:`embed_together`)."""
    model_id = store.model_id(identity.key, identity.as_dict())
    tagger = Tagger(store, settings, vocabulary, model_id, identity.key, events, summary, dry_run)
    tagger.extra = list(extra)
    tagger.several_models = collect or bool(extra)
    if collect:
        tagger.collect = {}
    encoder_box: list[Encoder] = []

    def load_model(text_only: bool) -> Encoder:
        """Load the model (the text tower alone when this process embeds no image) and record its
        logit scale and bias with the model."""
        with Timer(summary.timings, "load-model"):
            enc = load(resolved(), **encoder_options(settings, text_only))
        store.model_id(identity.key, identity.as_dict(), logit_scale=enc.logit_scale, logit_bias=enc.logit_bias)
        encoder_box[:] = [enc]
        return enc

    def full_encoder() -> Encoder:
        if not encoder_box or not encoder_box[0].has_image_tower:
            return load_model(text_only=False)
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
        failures: dict[bytes, Failure] = {}
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

    # 3. prompt vectors (the model is loaded here only if something needs it; with --engine ray the
    #    image tower runs on the cluster and this process loads the text tower only)
    def text_encoder() -> Encoder:
        if to_embed and settings.engine == "local":
            return full_encoder()
        return encoder_box[0] if encoder_box else load_model(text_only=True)

    tagger.prepare_text(text_encoder)
    dim = tagger.vector_dim()

    return ModelPass(
        tagger, work_cached, to_embed, followers, dim, full_encoder, resolved, label=model_label(settings.model)
    )


def finish_cached(planned: ModelPass) -> None:
    """Score (and write, or collect) the files whose vectors are cached. A file unchanged since rtagx
    wrote it under the same settings is settled without loading its vector or reading it."""
    tagger = planned.tagger
    tagger.events.stage("write", len(planned.cached) + len(planned.to_embed))
    handle_cached(tagger, settle_unchanged(tagger, planned.cached), planned.dim)


def finish_followers(planned: ModelPass) -> None:
    """Tag the RAW files that take their sibling's vector (those whose sibling failed are embedded)."""
    tagger = planned.tagger
    orphans = tag_followers(tagger, planned.followers, planned.dim or 0)
    if orphans:
        embed_works(planned, orphans)


def embed_works(planned: ModelPass, works: list[FileWork]) -> None:
    """Embed ``works`` with the executor the settings choose: this process (run/local.py: decode in
    a thread pool, encode in batches, store each batch, then write) or a Ray cluster."""
    t = planned.tagger
    if t.settings.engine == "ray":
        from rtagx.run.ray_engine import embed_on_ray

        embed_on_ray(t, planned.resolved(), works, t.settings, t.summary, t.events, t.dry_run)
    else:
        encoder = planned.full_encoder()
        encoder.plan(len(works))
        embed(t, encoder, works, t.settings, t.summary, t.events, t.dry_run)
        note_backend(t.summary, encoder)


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


def model_label(name: str) -> str:
    """A model's short name for progress bars and timings: a folder's or file's last part."""
    return os.path.basename(name.rstrip("/\\")) or name


def run_several(
    store: Store,
    roots: list[Path],
    settings: Settings,
    vocabulary: vocab_mod.Vocabulary,
    identity: ModelIdentity,
    resolved: Callable[[], ResolvedModel],
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
    load: Callable[..., Encoder],
    clear_untagged: bool,
    extra_models: Sequence[tuple[str, str]],
) -> None:
    """Several models over the same files, each file decoded once for all of them.

    Order matters because the first model writes the union of every model's keywords: each further
    model first collects the keywords of the files its cache has; then the files any model lacks
    are decoded once and embedded by every model that lacks them (further models first, chunk by
    chunk, so their keywords are collected before the first model writes the file); then the first
    model writes the files all its models had. Further models' files are counted once, by the first
    model's pass: only their embeddings and timings join ``summary`` (per model as ``encode:NAME``)."""
    extras = [plan_extra(store, roots, settings, vocabulary, n, p, dry_run, clear_untagged) for n, p in extra_models]
    first = plan_pass(
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
        extra=[p.tagger for p in extras],
    )
    passes = [*extras, first]
    seen_labels: set[str] = set()
    for p in passes:  # two folders of the same name still get two bars
        label, n = p.label, 2
        while label in seen_labels:
            label, n = f"{p.label}#{n}", n + 1
        p.label = label
        seen_labels.add(label)
    try:
        for p in extras:
            finish_cached(p)
        embed_together(passes, settings, summary, events, dry_run)
        for p in extras:
            finish_followers(p)
        finish_cached(first)
        finish_followers(first)
    finally:
        if summary.timings.get("encode"):
            summary.timings[f"encode:{first.label}"] = summary.timings["encode"]
        for p in extras:
            scratch = p.tagger.summary
            summary.embedded += scratch.embedded
            for stage, seconds in scratch.timings.items():
                add_time(summary.timings, stage, seconds)  # the encode rate counts every model's images
            if scratch.timings.get("encode"):
                summary.timings[f"encode:{p.label}"] = scratch.timings["encode"]
            p.tagger.summary = summary


def plan_extra(
    store: Store,
    roots: list[Path],
    settings: Settings,
    vocabulary: vocab_mod.Vocabulary,
    name: str,
    pretrained: str,
    dry_run: bool,
    clear_untagged: bool,
) -> ModelPass:
    """Plan a further model's pass: its tagger collects each file's keywords (written later by the
    first model's pass), into a summary of its own (see :func:`run_several`)."""
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
    return plan_pass(
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


def embed_together(
    passes: Sequence[ModelPass], settings: Settings, summary: RunSummary, events: RunEvents, dry_run: bool
) -> None:
    """Embed what each model lacks, decoding each file once for all of them.

    A thread pool decodes a chunk of files (one array per model that lacks the file:
    :func:`decode_for_models`) while the models encode the chunk before; each model then runs its
    usual embed stage over its share of the chunk, reading the arrays decoded here. Each model has
    its own progress bar (stage ``embed:NAME``)."""
    wanted = [p for p in passes if p.to_embed]
    if not wanted:
        return
    if settings.engine == "ray":  # the cluster decodes: each model's share goes to it in turn, further
        for p in wanted:  # models first, so their keywords are collected before the first one writes
            embed_works(p, p.to_embed)
        return
    encoders = [p.full_encoder() for p in wanted]
    for p, e in zip(wanted, encoders):
        e.plan(len(p.to_embed))
    specs = [decode.PreprocessSpec.from_model(e.model) for e in encoders]
    own: list[dict[bytes, FileWork]] = [{path_key(w.file.path): w for w in p.to_embed} for p in wanted]
    paths: dict[bytes, Path] = {}
    for p in wanted:
        for w in p.to_embed:
            paths.setdefault(path_key(w.file.path), w.file.path)
    keys = list(paths)
    on_gpu = any(e.device != "cpu" for e in encoders)
    batch = settings.batch_size or (128 if on_gpu else 16)
    step = max(64, 4 * batch)
    max_mp = settings.max_megapixels or decode.DEFAULT_MAX_MEGAPIXELS
    for p in wanted:
        events.stage(f"embed:{p.label}", len(p.to_embed))

    def decode_one(key: bytes) -> dict[int, np.ndarray] | BaseException:
        which = [i for i in range(len(wanted)) if key in own[i]]
        t = time.perf_counter()
        try:
            arrays = decode_for_models(paths[key], [specs[i] for i in which], max_mp)
            return dict(zip(which, arrays))
        except Exception as e:  # handed to each model's embed stage, which reports it as usual
            return e
        finally:
            add_time(summary.timings, "decode", time.perf_counter() - t)
            summary.count_decoded()

    def chunk_events(index: int, label: str) -> RunEvents:
        first = wanted[index] is passes[-1]  # the first model's pass reports files; the others collect

        def progress(name: str, n: int) -> None:
            events.progress(f"embed:{label}" if name == "embed" else name, n)

        return RunEvents(on_file=events.on_file if first else None, on_progress=progress)

    views = [chunk_events(i, p.label) for i, p in enumerate(wanted)]
    workers = settings.workers or default_workers("cuda" if on_gpu else "cpu")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtagx-decode")
    timed_out = False

    def submit(part: list[bytes]) -> list[tuple[bytes, Future]]:
        return [(k, pool.submit(decode_one, k)) for k in part]

    try:
        parts = [keys[n : n + step] for n in range(0, len(keys), step)]
        ahead = submit(parts[0])
        for n in range(len(parts)):
            current, ahead = ahead, (submit(parts[n + 1]) if n + 1 < len(parts) else [])
            results: dict[bytes, dict[int, np.ndarray] | BaseException] = {}
            for key, future in current:
                try:
                    results[key] = future.result(timeout=settings.decode_timeout)
                except FutureTimeout:
                    timed_out = True
                    STUCK_DECODERS.append(paths[key])
                    results[key] = FileSkip(
                        "decode-timeout",
                        f"decoding took longer than {settings.decode_timeout:g} s (decode-timeout setting)",
                    )
            for i, p in enumerate(wanted):
                works = [own[i][k] for k in parts[n] if k in own[i]]
                if not works:
                    continue

                def decoded(work: FileWork, i: int = i, results: dict[bytes, Any] = results) -> np.ndarray:
                    got = results[path_key(work.file.path)]
                    if isinstance(got, BaseException):
                        raise got
                    return got.pop(i)  # each array is used once: free it as soon as it is encoded

                embed(p.tagger, encoders[i], works, settings, p.tagger.summary, views[i], dry_run, decoded=decoded)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=not timed_out, cancel_futures=timed_out)
    for p, e in zip(wanted, encoders):
        note_backend(p.tagger.summary, e)


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
