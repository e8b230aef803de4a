"""Compose the stages: scan -> diff with the cache -> decode -> encode -> store -> score -> write.

``run_tag`` runs the whole line; ``run_retag`` starts at the cache (no image is decoded, no image
tower is loaded). Both report each file through ``RunEvents`` callbacks (the CLI renders them as
progress bars, text or JSON lines) and return a :class:`RunSummary`. Everything that can stop a run
(bad vocabulary, missing model, busy or broken cache, missing path) is checked before the first
file is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from rtagx import decode, metadata, scoring, vocab as vocab_mod
from rtagx.encoder import Encoder, ModelIdentity, ResolvedModel, load_encoder, resolve_model
from rtagx.errors import CacheError, FileSkip, ModelError, UsageError
from rtagx.scan import ScannedFile, ScanProblem, iter_scan
from rtagx.settings import Settings
from rtagx.store import FileRecord, Store, WrittenRecord, fingerprint_file, open_store, path_key

WRITE_TARGETS = ("auto", "embed", "sidecar", "txt", "none")
MODES = ("merge", "replace-own", "replace-all")
SIDECAR_STYLES = ("ext", "stem")


@dataclass
class FileOutcome:
    """What happened to one file. ``action``: written, unchanged, would-write, skipped."""

    path: Path
    action: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    embedded: bool = False
    reused: bool = False
    reason: str | None = None
    detail: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    target: str | None = None
    written_to: Path | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": os.fsdecode(self.path).encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            "action": self.action,
            "tags": [{"tag": t, "score": round(float(s), 4)} for t, s in self.tags],
        }
        if self.action == "skipped":
            out["reason"] = self.reason
            out["detail"] = self.detail
        else:
            out["embedded"] = self.embedded
            out["added"] = self.added
            out["removed"] = self.removed
            if self.target:
                out["target"] = self.target
            if self.written_to and self.written_to != self.path:
                out["written_to"] = str(self.written_to)
        return out


@dataclass
class RunSummary:
    seen: int = 0
    embedded: int = 0
    reused: int = 0
    tagged: int = 0
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    interrupted: bool = False
    dry_run: bool = False

    def add(self, outcome: FileOutcome) -> None:
        if outcome.action == "skipped":
            self.skipped += 1
            self.skip_reasons[outcome.reason or "unknown"] += 1
            return
        if outcome.tags:
            self.tagged += 1
        if outcome.action in ("written", "would-write"):
            self.written += 1
        elif outcome.action == "unchanged":
            self.unchanged += 1

    def as_json(self) -> dict[str, Any]:
        rate = self.embedded / self.timings["encode"] if self.timings.get("encode") else 0.0
        return {
            "summary": True,
            "seen": self.seen,
            "embedded": self.embedded,
            "reused": self.reused,
            "tagged": self.tagged,
            "written": self.written,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "skip_reasons": dict(sorted(self.skip_reasons.items())),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "seconds": round(self.wall_seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "images_per_second": round(self.embedded / self.wall_seconds, 2) if self.wall_seconds and self.embedded else 0.0,
            "encode_images_per_second": round(rate, 2),
        }


@dataclass
class RunEvents:
    """Callbacks the caller may set; the library never prints."""

    on_file: Callable[[FileOutcome], None] | None = None
    on_stage: Callable[[str, int], None] | None = None  # (stage name, total items) when a stage starts
    on_progress: Callable[[str, int], None] | None = None  # (stage name, items done since last call)
    on_wait_lock: Callable[[], None] | None = None
    on_message: Callable[[str], None] | None = None

    def file(self, outcome: FileOutcome) -> None:
        if self.on_file:
            self.on_file(outcome)

    def stage(self, name: str, total: int) -> None:
        if self.on_stage:
            self.on_stage(name, total)

    def progress(self, name: str, n: int = 1) -> None:
        if self.on_progress:
            self.on_progress(name, n)

    def message(self, text: str) -> None:
        if self.on_message:
            self.on_message(text)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.start


def validate_settings(settings: Settings) -> None:
    """Option values that can be checked before anything runs."""
    if settings.threshold is not None and not -1.0 <= settings.threshold <= 1.0:
        raise UsageError(f"--threshold must be within [-1, 1] (a cosine), got {settings.threshold}")
    if settings.write not in WRITE_TARGETS:
        raise UsageError(f"--write must be one of {', '.join(WRITE_TARGETS)}, got '{settings.write}'")
    if settings.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, got '{settings.mode}'")
    if settings.sidecar_style not in SIDECAR_STYLES:
        raise UsageError(f"--sidecar-style must be 'ext' or 'stem', got '{settings.sidecar_style}'")
    if settings.batch_size < 0 or settings.workers < 0 or settings.min_tags < 0 or (settings.top_k or 0) < 0:
        raise UsageError("--batch-size, --workers, --top-k and --min-tags must not be negative")
    if settings.max_megapixels < 0:
        raise UsageError("--max-megapixels must not be negative")
    if settings.margin is not None and not 0.0 <= settings.margin <= 2.0:
        raise UsageError(f"--margin must be within [0, 2] (a cosine difference), got {settings.margin}")
    if settings.min_share is not None and not 0.0 <= settings.min_share <= 1.0:
        raise UsageError(f"--min-share must be within [0, 1] (a softmax share), got {settings.min_share}")
    if settings.temperature is not None and not settings.temperature > 0:
        raise UsageError(f"--temperature must be greater than 0, got {settings.temperature}")


def scoring_options(settings: Settings) -> scoring.ScoringOptions:
    return scoring.ScoringOptions(
        threshold=settings.threshold,
        top_k=settings.top_k or None,
        min_tags=settings.min_tags,
        margin=settings.margin,
        min_share=settings.min_share,
        temperature=settings.temperature,
    )


def settings_hash(model_key: str, vocabulary: vocab_mod.Vocabulary, settings: Settings) -> str:
    """Everything that decides which keywords a file gets, and where they are written."""
    parts = {
        "model": model_key,
        "vocab": vocabulary.fingerprint(),
        "scoring": asdict(scoring_options(settings)),
    }
    return f"{_digest(parts, 12)}.{write_settings_hash(settings)}"


def write_settings_hash(settings: Settings) -> str:
    """The options that decide how and where chosen keywords are written (the part after the dot of
    :func:`settings_hash`): a retag whose new scoring picks the same keywords need not touch the file."""
    return _digest([settings.write, settings.mode, settings.sidecar_style, settings.caption_ext,
                    settings.keyword_root, settings.with_ancestors], 6)


def _digest(value: Any, size: int) -> str:
    return hashlib.blake2b(json.dumps(value, sort_keys=True, default=str).encode(), digest_size=size).hexdigest()


def root_settings(settings: Settings, identity_key: str) -> dict[str, Any]:
    """What a root remembers for ``retag``: the scoring and writing options, and the model."""
    keep = ("model", "pretrained", "tags", "templates", "threshold", "top_k", "min_tags", "margin", "min_share",
            "temperature", "write", "mode",
            "sidecar_style", "caption_ext", "keyword_root", "with_ancestors", "preserve_mtime")
    out = {k: getattr(settings, k) for k in keep}
    out["model_key"] = identity_key
    return out


def _extensions(settings: Settings) -> frozenset[str]:
    if not settings.extensions:
        return frozenset(decode.SUPPORTED_EXTENSIONS)
    exts = set()
    for ext in settings.extensions.split(","):
        ext = ext.strip().lower()
        if ext:
            exts.add(ext if ext.startswith(".") else "." + ext)
    return frozenset(exts)


#: Files whose decoder thread never returned (see :func:`decode_timeout`); the CLI exits without
#: waiting for those threads.
STUCK_DECODERS: list[Path] = []


def decode_timeout() -> float:
    """Seconds one image may take to decode before it is skipped (``RTAGX_DECODE_TIMEOUT``, 120)."""
    try:
        return max(0.1, float(os.environ.get("RTAGX_DECODE_TIMEOUT", "120")))
    except ValueError:
        return 120.0


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int) -> Iterator[tuple[Any, Future]]:
    """Like ``pool.map`` but with at most ``window`` items in flight: memory stays flat on any run."""
    pending: deque[tuple[Any, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


@dataclass
class _Work:
    file: ScannedFile
    content_id: int | None = None
    fingerprint: str | None = None
    reused: bool = False


class Tagger:
    """Shared state of a run: cache, model, vocabulary, tag matrix, options; scores and writes."""

    def __init__(self, store: Store, settings: Settings, vocabulary: vocab_mod.Vocabulary, model_id: int,
                 model_key: str, events: RunEvents, summary: RunSummary, dry_run: bool) -> None:
        self.store = store
        self.settings = settings
        self.vocab = vocabulary
        self.model_id = model_id
        self.model_key = model_key
        self.events = events
        self.summary = summary
        self.dry_run = dry_run
        self.options = scoring_options(settings)
        self.hash = settings_hash(model_key, vocabulary, settings)
        self.tag_matrix: np.ndarray | None = None
        self.model_name = store.model_info(model_id).get("name") or ""
        self.logit_scale: float | None = None
        self.logit_bias: float | None = None

    def prepare_text(self, get_encoder: Callable[[], Encoder]) -> None:
        """Tag matrix from cached prompt vectors; encode only prompts the cache lacks."""
        prompts = self.vocab.all_prompts()
        with _Timer(self.summary.timings, "text"):
            cached = self.store.text_vectors(self.model_id, prompts)
            missing = [p for p in prompts if p not in cached]
            if missing:
                encoder = get_encoder()
                self.events.stage("prompts", len(missing))
                step = 256
                for start in range(0, len(missing), step):
                    chunk = missing[start:start + step]
                    vecs = encoder.encode_texts(chunk)
                    self.store.put_text_vectors(self.model_id, chunk, vecs)
                    cached.update(zip(chunk, vecs))
                    self.events.progress("prompts", len(chunk))
            self.tag_matrix = scoring.build_tag_matrix(self.vocab, cached)
        info = self.store.model_info(self.model_id)
        self.logit_scale, self.logit_bias = info.get("logit_scale"), info.get("logit_bias")

    def _choose(self, vectors: np.ndarray) -> list[list[scoring.ChosenTag]]:
        assert self.tag_matrix is not None
        # Score exactly what the cache keeps (float16): a fresh vector and the same vector read back
        # by `retag` or a sibling then give identical scores, so no tag flips at the threshold.
        vectors = np.asarray(vectors, dtype=np.float16).astype(np.float32)
        with _Timer(self.summary.timings, "score"):
            scores = scoring.score_images(vectors, self.tag_matrix, logit_scale=self.logit_scale,
                                          logit_bias=self.logit_bias)
            return scoring.choose_tags(scores, self.vocab, self.options, model_name=self.model_name,
                                       probabilities=self.logit_bias is not None or None)

    def handle(self, works: Sequence[_Work], vectors: np.ndarray, embedded: bool) -> None:
        """Score a batch of files whose vectors are known, write their keywords, report each."""
        chosen_all = self._choose(vectors)
        keys = [path_key(w.file.path) for w in works]
        previous = self.store.written(keys)
        records: list[WrittenRecord] = []
        aliases: list[tuple[Path, int, int, str]] = []
        alias_ids: list[int] = []
        with _Timer(self.summary.timings, "write"):
            for work, key, chosen in zip(works, keys, chosen_all):
                outcome = self._write_one(work, key, chosen, previous.get(key), embedded, records, aliases, alias_ids)
                self.summary.add(outcome)
                self.events.file(outcome)
                self.events.progress("write", 1)
        if records:
            self.store.put_written(records)
        if aliases:
            self.store.put_files(aliases, alias_ids)

    def _write_one(self, work: _Work, key: bytes, chosen: list[scoring.ChosenTag], prev: WrittenRecord | None,
                   embedded: bool, records: list[WrittenRecord], aliases: list[tuple[Path, int, int, str]],
                   alias_ids: list[int]) -> FileOutcome:
        s = self.settings
        flat, hier = scoring.keywords_for(chosen, self.vocab, with_ancestors=s.with_ancestors)
        tags = [(c.tag.keyword, c.score) for c in chosen]
        path = work.file.path
        base = FileOutcome(path, "unchanged", tags, embedded=embedded, reused=work.reused)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return FileOutcome(path, "skipped", tags, reason="missing", detail="file vanished during the run")
        except OSError as e:
            return FileOutcome(path, "skipped", tags, reason="permission-denied", detail=e.strerror or str(e))
        if (prev is not None and prev.keywords == flat and prev.hierarchical == hier and prev.size == st.st_size
                and prev.mtime_ns == st.st_mtime_ns
                and prev.settings_hash.rpartition(".")[2] == self.hash.rpartition(".")[2]):
            # The file is as rtagx left it and would get the same keywords the same way: no need to
            # read it (a retag with a new threshold over 100k files mostly lands here).
            base.target = prev.target
            if prev.settings_hash != self.hash and not self.dry_run:
                records.append(prev._replace(settings_hash=self.hash, model_id=self.model_id, tags=tags))
            return base
        if s.write == "none":
            base.target = "none"
            return base
        try:
            result = metadata.write_keywords(
                path, flat, hierarchical=hier, mode=s.mode, target=s.write, sidecar_style=s.sidecar_style,
                caption_ext=s.caption_ext, keyword_root=s.keyword_root or None, preserve_mtime=s.preserve_mtime,
                dry_run=self.dry_run,
            )
        except FileSkip as e:
            return FileOutcome(path, "skipped", tags, embedded=embedded, reused=work.reused, reason=e.reason, detail=e.detail)
        base.target = result.target
        base.written_to = result.written_to
        base.added, base.removed = list(result.added), list(result.removed)
        if self.dry_run:
            base.action = "would-write" if result.changed else "unchanged"
            return base
        base.action = "written" if result.changed else "unchanged"
        try:
            st2 = os.stat(path)
        except OSError:
            return base
        if (st2.st_size, st2.st_mtime_ns) != (st.st_size, st.st_mtime_ns) and work.content_id is not None:
            # Our own write changed the file's bytes, not its pixels: alias the new identity.
            try:
                fp = fingerprint_file(path, st2.st_size)
                aliases.append((path, st2.st_size, st2.st_mtime_ns, fp))
                alias_ids.append(work.content_id)
            except OSError:
                pass
        records.append(WrittenRecord(key, self.model_id, self.hash, flat, hier, result.target,
                                     path_key(result.written_to) if result.written_to else None,
                                     st2.st_size, st2.st_mtime_ns, tags))
        return base


def _check_paths(paths: Sequence[Path]) -> list[Path]:
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


def _open_locked(settings: Settings, events: RunEvents) -> Store:
    """Take the writer lock first, then open (and create or migrate) the cache: two runs started at
    the same moment on a new cache must not both try to create its tables."""
    from rtagx.store import WriterLock

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


def _default_workers(device: str = "cpu") -> int:
    """Decode threads. On the CPU the image tower needs the cores, and decoding is a small share of
    the work (draft-mode JPEG): one thread per core, at most 8. A GPU encodes hundreds of images per
    second and decoding becomes the limit: every core, at most 32."""
    cores = os.cpu_count() or 2
    if device in ("cuda", "mps"):
        return max(2, min(32, cores))
    return max(1, min(8, cores))


def run_tag(paths: Sequence[Path], settings: Settings, *, dry_run: bool = False,
            events: RunEvents | None = None) -> RunSummary:
    """Embed what is new, tag every file under ``paths``, write keywords. See module docstring."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    roots = _check_paths(paths)
    vocabulary = vocab_mod.load_vocabulary(settings.tags)
    if settings.templates:
        vocabulary = vocab_mod.with_templates(vocabulary, settings.templates)
    from rtagx.model_memo import remember_identity, remembered_identity

    resolved_box: list[ResolvedModel] = []

    def resolved() -> ResolvedModel:
        """The full resolution (imports open_clip, finds the weights): only when a model is needed."""
        if not resolved_box:
            with _Timer(summary.timings, "resolve-model"):
                resolved_box.append(resolve_model(settings.model, settings.pretrained,
                                                  offline=True if settings.offline else None))
        return resolved_box[0]

    if not settings.cache_path().exists():
        resolved()  # a bad model option fails before the cache file is even created
    store = _open_locked(settings, events)
    try:
        identity = None if resolved_box else remembered_identity(store, settings.model, settings.pretrained)
        if identity is None:
            identity = resolved().identity
            remember_identity(store, settings.model, settings.pretrained, identity)
        _tag_with_store(store, roots, settings, vocabulary, identity, resolved, summary, events, dry_run)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def _tag_with_store(store: Store, roots: list[Path], settings: Settings, vocabulary: vocab_mod.Vocabulary,
                    identity: ModelIdentity, resolved: Callable[[], ResolvedModel], summary: RunSummary,
                    events: RunEvents, dry_run: bool) -> None:
    model_id = store.model_id(identity.key, identity.as_dict())
    tagger = Tagger(store, settings, vocabulary, model_id, identity.key, events, summary, dry_run)
    encoder_box: list[Encoder] = []

    def full_encoder() -> Encoder:
        if not encoder_box or not encoder_box[0].has_image_tower:
            with _Timer(summary.timings, "load-model"):
                enc = load_encoder(resolved(), device=settings.device, precision=settings.precision,
                                   threads=settings.threads or None)
            store.model_id(identity.key, identity.as_dict(), dim=None, logit_scale=enc.logit_scale,
                           logit_bias=enc.logit_bias)
            encoder_box[:] = [enc]
        return encoder_box[0]

    # 1. scan and diff with the cache
    work_cached: list[_Work] = []
    work_new: list[_Work] = []
    with _Timer(summary.timings, "scan"):
        events.stage("scan", 0)
        known: dict[bytes, FileRecord] = {}
        for root in roots:
            known.update(store.files_under(root))
        unchanged_keys: list[bytes] = []
        for item in iter_scan(roots, _extensions(settings), exclude=settings.exclude,
                              include_hidden=settings.include_hidden, follow_symlinks=settings.follow_symlinks,
                              on_temp_file=None if dry_run else metadata.clean_stale_temps):
            summary.seen += 1
            events.progress("scan", 1)
            if isinstance(item, ScanProblem):
                outcome = FileOutcome(item.path, "skipped", reason=item.reason, detail=item.detail)
                summary.add(outcome)
                events.file(outcome)
                continue
            rec = known.get(path_key(item.path))
            if rec is not None and rec.size == item.size and rec.mtime_ns == item.mtime_ns:
                work_cached.append(_Work(item, rec.content_id, rec.fingerprint))
                unchanged_keys.append(rec.path)
            else:
                work_new.append(_Work(item))
    # 2. contents already embedded by this model?
    with _Timer(summary.timings, "diff"):
        have = store.contents_with_vectors(model_id, [w.content_id for w in work_cached if w.content_id])
        to_embed: list[_Work] = [w for w in work_cached if w.content_id not in have]
        work_cached = [w for w in work_cached if w.content_id in have]
        fresh_rows: list[tuple[Path, int, int, str]] = []
        fresh_ids: list[int | None] = []
        for w in work_new:
            try:
                w.fingerprint = fingerprint_file(w.file.path, w.file.size)
            except FileNotFoundError:
                _skip(w.file.path, "missing", "file vanished during the run", summary, events)
                continue
            except PermissionError as e:
                _skip(w.file.path, "permission-denied", e.strerror or "permission denied", summary, events)
                continue
            except OSError as e:
                _skip(w.file.path, "unreadable", e.strerror or str(e), summary, events)
                continue
            cid = store.content_for_fingerprint(w.fingerprint)
            if cid is not None and cid in store.contents_with_vectors(model_id, [cid]):
                w.content_id, w.reused = cid, True
                fresh_rows.append((w.file.path, w.file.size, w.file.mtime_ns, w.fingerprint))
                fresh_ids.append(cid)
                work_cached.append(w)
            else:
                to_embed.append(w)
        if fresh_rows and not dry_run:
            store.put_files(fresh_rows, fresh_ids)
        summary.reused = sum(1 for w in work_cached if w.reused)

    # Something must be embedded: find the model now (its weights may be missing), before any write.
    if to_embed:
        resolved()

    # 3. prompt vectors (the model is loaded here only if something needs it)
    def text_encoder() -> Encoder:
        if to_embed:
            return full_encoder()
        if not encoder_box:
            with _Timer(summary.timings, "load-model"):
                encoder_box.append(load_encoder(resolved(), device=settings.device, precision=settings.precision,
                                                text_only=True, threads=settings.threads or None))
            store.model_id(identity.key, identity.as_dict(), logit_scale=encoder_box[0].logit_scale,
                           logit_bias=encoder_box[0].logit_bias)
        return encoder_box[0]

    tagger.prepare_text(text_encoder)
    dim = tagger.tag_matrix.shape[1] if tagger.tag_matrix is not None and tagger.tag_matrix.size else 0

    # 4. files whose vectors are cached: score and write, in chunks. A file unchanged since rtagx
    #    wrote it under the same settings is settled without loading its vector or reading it.
    events.stage("write", len(work_cached) + len(to_embed))
    work_cached = _settle_unchanged(tagger, work_cached)
    _handle_cached(tagger, work_cached, dim)

    # 5. embed the rest: decode in a thread pool, encode in batches, store each batch, then write.
    #    A RAW file with a JPEG (or other) sibling of the same stem is not decoded: it takes the
    #    sibling's vector, so both get the same tags and the slow RAW decode is skipped.
    to_embed, followers = _pair_raw_siblings(to_embed, work_cached)
    if to_embed:
        encoder = full_encoder()
        _embed(tagger, encoder, to_embed, settings, summary, events, dry_run)
    orphans = _tag_followers(tagger, followers, dim or 0)
    if orphans:
        _embed(tagger, full_encoder(), orphans, settings, summary, events, dry_run)

    # 6. remember the root for retag
    if not dry_run:
        for root in roots:
            if root.is_dir():
                store.put_root(root, root_settings(settings, identity.key))


def _sibling_key(path: Path) -> tuple[str, str]:
    return (str(path.parent), path.stem.lower())


def _pair_raw_siblings(to_embed: list[_Work], cached: list[_Work]) -> tuple[list[_Work], list[tuple[_Work, _Work]]]:
    """Split off RAW files whose same-stem sibling (IMG_1.CR2 beside IMG_1.JPG) is in this run.

    Returns the works still to embed and (raw, sibling) pairs; the RAW takes the sibling's vector.
    The sibling is the camera's own rendering of the same exposure, so its vector describes the RAW
    as well as a demosaic would, at a fraction of the decode time.
    """
    raw_exts = decode.RAW_EXTENSIONS
    leaders: dict[tuple[str, str], _Work] = {}
    for w in list(cached) + list(to_embed):
        if w.file.path.suffix.lower() not in raw_exts:
            leaders.setdefault(_sibling_key(w.file.path), w)
    rest: list[_Work] = []
    pairs: list[tuple[_Work, _Work]] = []
    for w in to_embed:
        leader = leaders.get(_sibling_key(w.file.path)) if w.file.path.suffix.lower() in raw_exts else None
        if leader is not None:
            pairs.append((w, leader))
        else:
            rest.append(w)
    return rest, pairs


def _tag_followers(tagger: Tagger, pairs: list[tuple[_Work, _Work]], dim: int) -> list[_Work]:
    """Give each RAW file its sibling's vector, store it under the RAW's own content, tag it.
    Returns the RAW files whose sibling could not be embedded (they are embedded themselves)."""
    orphans: list[_Work] = []
    store = tagger.store
    for raw, leader in pairs:
        if leader.content_id is None or not store.contents_with_vectors(tagger.model_id, [leader.content_id]):
            orphans.append(raw)
            continue
        vector = store.vectors(tagger.model_id, [leader.content_id], dim)
        try:
            fingerprint = raw.fingerprint or fingerprint_file(raw.file.path, raw.file.size)
        except OSError as e:
            _skip(raw.file.path, "missing" if isinstance(e, FileNotFoundError) else "unreadable",
                  e.strerror or str(e), tagger.summary, tagger.events)
            continue
        row = (raw.file.path, raw.file.size, raw.file.mtime_ns, fingerprint)
        (cid,) = store.put_files([row])
        store.put_vectors(tagger.model_id, [cid], vector, [row])
        raw.content_id, raw.fingerprint, raw.reused = cid, fingerprint, True
        tagger.summary.reused += 1
        tagger.handle([raw], vector, embedded=False)
    return orphans


def _skip(path: Path, reason: str, detail: str, summary: RunSummary, events: RunEvents) -> None:
    outcome = FileOutcome(path, "skipped", reason=reason, detail=detail)
    summary.add(outcome)
    events.file(outcome)


def _settle_unchanged(tagger: Tagger, works: list[_Work]) -> list[_Work]:
    if tagger.dry_run and not works:
        return works
    rest: list[_Work] = []
    summary, events, settings_hash_ = tagger.summary, tagger.events, tagger.hash
    for start in range(0, len(works), 4096):  # chunks: memory stays flat on a 100k-file no-op run
        part = works[start:start + 4096]
        keys = [path_key(w.file.path) for w in part]
        written = tagger.store.written(k for k, w in zip(keys, part) if not w.reused)
        for w, key in zip(part, keys):
            rec = written.get(key)
            if (rec is not None and rec.settings_hash == settings_hash_ and rec.size == w.file.size
                    and rec.mtime_ns == w.file.mtime_ns):
                written_to = None
                if rec.written_to:
                    written_to = w.file.path if rec.written_to == key else Path(os.fsdecode(rec.written_to))
                outcome = FileOutcome(w.file.path, "unchanged", list(rec.tags), target=rec.target,
                                      written_to=written_to)
                summary.add(outcome)
                events.file(outcome)
                events.progress("write", 1)
            else:
                rest.append(w)
    return rest


def _handle_cached(tagger: Tagger, works: list[_Work], dim: int, chunk: int = 2048) -> None:
    for start in range(0, len(works), chunk):
        part = works[start:start + chunk]
        with _Timer(tagger.summary.timings, "load-vectors"):
            vectors = tagger.store.vectors(tagger.model_id, [w.content_id for w in part], dim)  # type: ignore[misc]
        tagger.handle(part, vectors, embedded=False)


class _BatchWriter:
    """Stores encoded batches and writes their keywords on one background thread, so that the encoder
    never waits for SQLite or file writes.

    A bounded queue (``depth`` batches) keeps memory flat: when writing falls behind, the encoder
    blocks on :meth:`put` instead of piling up vectors. Everything that reports a file (skips,
    outcomes, progress) goes through the same queue, so events stay in order and come from one thread.
    The thread opens its own connection to the cache (a sqlite3 connection belongs to the thread that
    made it) and uses a shallow copy of the tagger bound to it; it is the only thread that touches the
    cache while embedding. The metadata writers are not shared with any other thread.
    """

    def __init__(self, tagger: Tagger, summary: RunSummary, events: RunEvents, depth: int = 3) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=max(1, depth))
        self._tagger = tagger
        self._summary = summary
        self._events = events
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rtagx-write", daemon=True)
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        """Queue ("batch", works, vectors) or ("skip", path, reason, detail); blocks while full."""
        import queue

        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise CacheError("the cache writer stopped unexpectedly") from None

    def close(self) -> None:
        """Write everything queued, stop the thread, and raise what it failed with."""
        if self._thread.is_alive():
            self.put(("stop",))
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        import copy

        store: Store | None = None
        try:
            store = open_store(self._tagger.store.path)
            tagger = copy.copy(self._tagger)
            tagger.store = store
            summary, events = self._summary, self._events
            while True:
                item = self._queue.get()
                if item[0] == "stop":
                    return
                if self.error is not None:
                    continue
                if item[0] == "skip":
                    _skip(item[1], item[2], item[3], summary, events)
                    continue
                _, works_b, vectors = item
                with _Timer(summary.timings, "store"):
                    files = [(w.file.path, w.file.size, w.file.mtime_ns, w.fingerprint or "") for w in works_b]
                    ids = store.put_files(files)  # allocates content ids for new fingerprints
                    for w, cid in zip(works_b, ids):
                        w.content_id = cid
                    store.put_vectors(tagger.model_id, ids, vectors, files)
                summary.embedded += len(works_b)
                events.progress("embed", len(works_b))
                tagger.handle(works_b, vectors, embedded=True)
        except BaseException as e:  # handed to the main thread on its next put/close
            self.error = e
            while True:  # keep draining so that a blocked put() wakes up
                try:
                    if self._queue.get(timeout=0.5)[0] == "stop":
                        break
                except Exception:  # queue.Empty: nobody is putting any more
                    break
        finally:
            if store is not None:
                store.close()


def _embed(tagger: Tagger, encoder: Encoder, works: list[_Work], settings: Settings, summary: RunSummary,
           events: RunEvents, dry_run: bool) -> None:
    """Decode, encode, store and write, overlapped: a thread pool decodes ahead (bounded window), the
    calling thread only builds batches and runs the image tower, and :class:`_BatchWriter` stores
    vectors and writes keywords behind it. On Ctrl-C every batch already encoded is still stored."""
    spec = decode.PreprocessSpec.from_model(encoder.model)
    max_mp = settings.max_megapixels or decode.DEFAULT_MAX_MEGAPIXELS
    batch_size = settings.batch_size or (16 if encoder.device == "cpu" else 128)
    workers = settings.workers or _default_workers(encoder.device)
    decode_time = [0.0]

    def load(work: _Work) -> np.ndarray:
        t = time.perf_counter()
        try:
            return decode.decode_for_model(work.file.path, spec, max_megapixels=max_mp)
        finally:
            decode_time[0] += time.perf_counter() - t

    for w in works:
        if w.fingerprint is None:
            w.fingerprint = fingerprint_file(w.file.path, w.file.size) if os.path.exists(w.file.path) else ""
    events.stage("embed", len(works))
    writer = _BatchWriter(tagger, summary, events)
    batch: list[tuple[_Work, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        with _Timer(summary.timings, "encode"):
            tensor = decode.to_model_batch([a for _, a in batch], spec)
            vectors = encoder.encode_images(tensor)
        writer.put(("batch", [w for w, _ in batch], vectors))
        batch.clear()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtagx-decode")
    timed_out = 0
    try:
        for work, future in _bounded_map(pool, load, works, window=max(batch_size * 2, workers * 4)):
            try:
                array = future.result(timeout=decode_timeout())
            except FutureTimeout:
                # A decoder that loops must not stop the run: skip the file; its thread is
                # abandoned (Python cannot kill it) and the process exits without waiting for it.
                timed_out += 1
                STUCK_DECODERS.append(work.file.path)
                writer.put(("skip", work.file.path, "decode-timeout",
                            f"decoding took longer than {decode_timeout():g} s (RTAGX_DECODE_TIMEOUT)"))
                continue
            except FileSkip as e:
                writer.put(("skip", work.file.path, e.reason, e.detail))
                continue
            except Exception as e:  # a decoder bug must not stop the run
                writer.put(("skip", work.file.path, "decode-failed", f"{type(e).__name__}: {e}"))
                continue
            batch.append((work, array))
            if len(batch) >= batch_size:
                flush()
        flush()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        try:
            writer.close()  # keep every batch already encoded
        except BaseException:  # the first error is the one to report
            pass
        summary.timings["decode"] = summary.timings.get("decode", 0.0) + decode_time[0]
        raise
    pool.shutdown(wait=not timed_out, cancel_futures=bool(timed_out))
    writer.close()
    summary.timings["decode"] = summary.timings.get("decode", 0.0) + decode_time[0]


# -- retag -------------------------------------------------------------------------------------------

def run_retag(paths: Sequence[Path], overrides: dict[str, Any], *, dry_run: bool = False,
              events: RunEvents | None = None, config_path: Path | None = None,
              base_settings: Settings | None = None) -> RunSummary:
    """Re-score cached vectors with new options and rewrite keywords where the chosen tags changed.

    Never decodes an image and never loads the image tower. With no ``paths``, covers every root
    ``tag`` processed, each with the settings it was last tagged with unless ``overrides`` say else.
    """
    from rtagx.settings import load_settings

    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    base = base_settings or load_settings(overrides, config_path=config_path)
    validate_settings(base)
    store = _open_locked(base, events)
    try:
        roots = store.roots()
        targets: list[tuple[Path, dict[str, Any]]] = []
        if paths:
            for p in _check_paths(paths):
                owner = _owning_root(p, roots)
                targets.append((p, owner[1] if owner else {}))
        else:
            if not roots:
                raise UsageError(f"the cache {store.path} has no tagged folders yet: run `rtagx tag PATH` first")
            targets = [(p, s) for p, s, _ in roots]
        for target, remembered in targets:
            settings = load_settings(overrides, config_path=config_path, base=remembered)
            validate_settings(settings)
            _retag_one(store, target, settings, remembered, summary, events, dry_run)
            if not dry_run and target.is_dir() and any(p == target for p, _, _ in roots):
                store.put_root(target, {**root_settings(settings, remembered.get("model_key", "")),
                                        "model_key": remembered.get("model_key", "")})
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def _owning_root(path: Path, roots: list[tuple[Path, dict[str, Any], float]]) -> tuple[Path, dict[str, Any]] | None:
    best = None
    for root, s, _ in roots:
        if path == root or root in path.parents:
            if best is None or len(str(root)) > len(str(best[0])):
                best = (root, s)
    return best


def _retag_one(store: Store, target: Path, settings: Settings, remembered: dict[str, Any], summary: RunSummary,
               events: RunEvents, dry_run: bool) -> None:
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
        info = store.model_info(model_id)
        name = info.get("config_path") or info.get("name")
        pretrained = info.get("checkpoint_path") or info.get("pretrained")
        resolved = resolve_model(name, pretrained, offline=True if settings.offline else None)
        if resolved.identity.key != model_key:
            raise ModelError(f"the model that made the cached vectors ({name}, {pretrained}) has changed on disk; "
                             f"run `rtagx tag` again to re-embed with it")
        with _Timer(summary.timings, "load-model"):
            return load_encoder(resolved, device=settings.device, precision=settings.precision, text_only=True)

    tagger.prepare_text(text_encoder)
    dim = tagger.tag_matrix.shape[1] if tagger.tag_matrix is not None and tagger.tag_matrix.size else 0
    records = store.files_under(target)
    have = store.contents_with_vectors(model_id, [r.content_id for r in records.values()])
    works: list[_Work] = []
    for key, rec in sorted(records.items()):
        summary.seen += 1
        path = Path(os.fsdecode(key))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            _skip(path, "missing", "in the cache but no longer on disk (`rtagx cache prune` forgets it)", summary, events)
            continue
        except OSError as e:
            _skip(path, "permission-denied", e.strerror or str(e), summary, events)
            continue
        if rec.content_id not in have:
            _skip(path, "not-embedded", "no vector from this model yet (run `rtagx tag` on it)", summary, events)
            continue
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            try:
                same = store.content_for_fingerprint(fingerprint_file(path, st.st_size)) == rec.content_id
            except OSError:
                same = False
            if not same:
                _skip(path, "changed", "changed since it was embedded (run `rtagx tag` to embed it again)", summary, events)
                continue
        works.append(_Work(ScannedFile(path, st.st_size, st.st_mtime_ns, target), rec.content_id, rec.fingerprint))
    summary.reused += len(works)
    events.stage("write", len(works))
    _handle_cached(tagger, works, dim)


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


# -- untag and show --------------------------------------------------------------------------------

def run_untag(paths: Sequence[Path], settings: Settings, *, dry_run: bool = False,
              events: RunEvents | None = None) -> RunSummary:
    """Remove exactly the keywords rtagx wrote (and its private record) from files under ``paths``."""
    events = events or RunEvents()
    started = time.perf_counter()
    summary = RunSummary(dry_run=dry_run)
    validate_settings(settings)
    roots = _check_paths(paths)
    store = _open_locked(settings, events)
    try:
        forget: list[bytes] = []
        events.stage("write", 0)
        for item in iter_scan(roots, _extensions(settings), exclude=settings.exclude,
                              include_hidden=settings.include_hidden, follow_symlinks=settings.follow_symlinks):
            summary.seen += 1
            if isinstance(item, ScanProblem):
                _skip(item.path, item.reason, item.detail, summary, events)
                continue
            try:
                result = metadata.remove_own_keywords(item.path, target=settings.write, sidecar_style=settings.sidecar_style,
                                                      preserve_mtime=settings.preserve_mtime, dry_run=dry_run)
            except FileSkip as e:
                _skip(item.path, e.reason, e.detail, summary, events)
                continue
            action = ("would-write" if dry_run else "written") if result.changed else "unchanged"
            outcome = FileOutcome(item.path, action, removed=list(result.removed), target=result.target,
                                  written_to=result.written_to)
            summary.add(outcome)
            events.file(outcome)
            events.progress("write", 1)
            if result.changed and not dry_run:
                forget.append(path_key(item.path))
        if forget:
            store.forget_written(forget)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        store.close()
        summary.wall_seconds = time.perf_counter() - started
    return summary


def describe_file(path: Path, settings: Settings, top: int = 10) -> dict[str, Any]:
    """What ``rtagx show`` prints: keywords now in the file, which rtagx owns, and cached scores."""
    path = Path(os.path.abspath(path))
    info: dict[str, Any] = {"path": str(path)}
    cache = settings.cache_path()
    target, style = settings.write, settings.sidecar_style
    if cache.exists() and settings.sources.get("write", "default") == "default":
        # where rtagx wrote this file's keywords last time (a root tagged with --write sidecar, say)
        with open_store(cache, readonly=True) as store:
            owner = _owning_root(path, store.roots())
        if owner:
            target = owner[1].get("write") or target
            style = owner[1].get("sidecar_style") or style
    if not os.path.lexists(path):
        info["error"] = "missing: no such file"
    else:
        try:
            current = metadata.read_keywords(path, sidecar_style=style, target=target)
            info.update(keywords=current.keywords, owned=current.owned, hierarchical=current.hierarchical,
                        source=current.source)
        except FileSkip as e:
            info["error"] = f"{e.reason}: {e.detail}"
    if not cache.exists():
        return info
    with open_store(cache, readonly=True) as store:
        rec = store.file(path)
        if rec is None:
            info["cached"] = False
            return info
        info["cached"] = True
        written = store.written([rec.path]).get(rec.path)
        if written:
            info["rtagx_chose"] = written.keywords
        owner = _owning_root(path, store.roots())
        remembered = owner[1] if owner else {}
        model_key = remembered.get("model_key")
        row = store.conn.execute("SELECT id, dim FROM models WHERE key = ?", (model_key,)).fetchone() if model_key else None
        if row is None:
            return info
        model_id, dim = int(row[0]), row[1]
        if rec.content_id not in store.contents_with_vectors(model_id, [rec.content_id]):
            return info
        from rtagx.settings import load_settings

        eff = load_settings(base=remembered)
        vocabulary = vocab_mod.load_vocabulary(eff.tags)
        texts = store.text_vectors(model_id, vocabulary.all_prompts())
        if len(texts) < len(set(vocabulary.all_prompts())):
            return info
        matrix = scoring.build_tag_matrix(vocabulary, texts)
        vec = store.vectors(model_id, [rec.content_id], matrix.shape[1])
        m = store.model_info(model_id)
        scores = scoring.score_images(vec, matrix, logit_scale=m.get("logit_scale"), logit_bias=m.get("logit_bias"))[0]
        order = np.argsort(-scores)[:top]
        info["model"] = m.get("name")
        info["vocabulary"] = eff.tags
        info["scores"] = [(vocabulary.tags[i].keyword, float(scores[i])) for i in order]
    return info
