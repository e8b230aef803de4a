"""``rtagx search``: rank cached images against text and image queries, from the cache alone.

No image of the library is decoded and no image tower is loaded for a text query: the query
texts go through the text tower of the model that made the cached vectors (and are cached like
prompts, so asking again needs no model at all), and every cached vector is compared in blocks of
float16 rows, so memory stays at one block plus one float per image however large the library.

Queries combine, in the spirit of rclip: ``beach + sunset - people``, ``2:beach - 0.5:people``,
image files among the terms (or ``--like IMG``). The query vector is the normalized weighted sum of
the terms' unit vectors; a single text query scores each image with its plain cosine.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import FileRecord, Store, WriterLock, key_path, open_store, path_key
from rtagx.errors import CacheError, FileSkip, UsageError
from rtagx.imaging.formats import SUPPORTED_EXTENSIONS
from rtagx.model.memo import remembered_identity
from rtagx.run.common import owning_root
from rtagx.settings import Settings

#: A weight written before a term: ``2:beach``, ``0.5:people``.
_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.+)$", re.S)
#: Operators inside one quoted argument: ``"beach + sunset - people"``.
_OPERATOR = re.compile(r"\s+([+-])\s+")


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: a text or an image file, with its signed weight."""

    kind: str  # "text" or "image"
    value: str  # the text, or the image's absolute path
    weight: float = 1.0


@dataclass
class CachedModel:
    """The model whose cached vectors are searched."""

    id: int
    key: str
    name: str
    dim: int
    #: other models with vectors in the cache that this choice left out (nothing named a model or a
    #: tagged folder, so the newest was taken): their folders' images are not searched
    passed_over: tuple[str, ...] = ()


@dataclass
class Hit:
    rank: int
    path: Path
    score: float
    content_id: int

    def as_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": text_path(self.path), "score": round(self.score, 5)}


@dataclass
class SearchResult:
    hits: list[Hit]
    terms: list[QueryTerm]
    model: CachedModel
    compared: int  # cached vectors ranked
    timings: dict[str, float] = field(default_factory=dict)


def text_path(path: os.PathLike[str] | str | bytes) -> str:
    """A path as valid text for JSON and pages: bytes that are not UTF-8 become U+FFFD (as in
    ``tag --json``); a name the OS allows must not crash the output."""
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_image_term(token: str) -> bool:
    """A query word that names an existing image file is an image query."""
    return Path(token).suffix.lower() in SUPPORTED_EXTENSIONS and os.path.isfile(os.path.expanduser(token))


#: How a word that means a path starts; a text rarely does (``AC/DC`` does not).
_PATH_STARTS = ("/", "~/", "./", "../")


def check_path_word(word: str) -> None:
    """A word written as a path that names no image: a mistyped or deleted folder or photo must not
    turn into a text query over the whole cache (exit 0, results from everywhere)."""
    if not word.startswith(_PATH_STARTS):
        return
    if not os.path.lexists(os.path.expanduser(word)):
        raise UsageError(f"path not found: {word}")
    raise UsageError(f"{word} is not an image file rtagx reads: give a folder to search in or an image to search by")


def parse_query(tokens: Sequence[str], like: Sequence[Path] = ()) -> list[QueryTerm]:
    """Turn command-line words into weighted terms.

    ``+`` and ``-`` (separate words, or spaced inside one argument) set the sign of the next term;
    adjacent plain words form one text (``red car`` is one query); ``W:term`` weights a term; a word
    naming an image file is an image term. ``like`` adds image terms with weight 1.
    """
    words: list[str] = []
    for token in tokens:
        words.extend(p for p in _OPERATOR.split(f" {token} ".replace("\n", " ")) if p.strip())
    terms: list[QueryTerm] = []
    sign = 1.0
    text: list[str] = []
    text_weight = 1.0

    def flush() -> None:
        nonlocal text
        if text:
            terms.append(QueryTerm("text", " ".join(text), text_weight))
            text = []

    for word in (w.strip() for w in words):
        if word in ("+", "-"):
            flush()
            sign = -1.0 if word == "-" else 1.0
            continue
        weight, match = 1.0, _WEIGHT.match(word)
        if match:
            flush()  # a weight starts a new term
            weight, word = float(match.group(1)), match.group(2)
        if is_image_term(word):
            flush()
            terms.append(QueryTerm("image", os.path.abspath(os.path.expanduser(word)), sign * weight))
            sign = 1.0
            continue
        check_path_word(word)
        if text:
            text.append(word)
        else:
            text, text_weight = [word], sign * weight
        sign = 1.0
    flush()
    terms.extend(QueryTerm("image", os.path.abspath(os.path.expanduser(p)), 1.0) for p in like)
    if not terms:
        raise UsageError('no query: give a text (rtagx search "a dog on a beach") or --like IMAGE')
    if all(t.weight <= 0 for t in terms):
        raise UsageError('a query needs at least one positive term ("beach - people", not "- people")')
    return terms


def choose_model(store: Store, settings: Settings, scope: Sequence[Path]) -> CachedModel:
    """The model whose vectors to use: the one --model/--pretrained name when given, else the one the
    folders in scope were tagged with, else the most recently added model that has vectors (the
    others are named in ``passed_over``, for the caller to say so)."""
    model_id: int | None = None
    passed_over: tuple[str, ...] = ()
    if any(settings.sources.get(name, "default") != "default" for name in ("model", "pretrained")):
        identity = remembered_identity(store, settings.model, settings.pretrained)
        if identity is None:
            from rtagx.model.encoder import resolve_model

            identity = resolve_model(settings.model, settings.pretrained, offline=True).identity
        model_id = store.model_id_for_key(identity.key)
        if model_id is None or not store.vector_dim(model_id):
            raise CacheError(f"no vectors of {settings.model} ({settings.pretrained}) in the cache {store.path}")
    else:
        roots = store.roots()
        for p in scope:
            owner = owning_root(p, roots)
            key = owner[1].get("model_key") if owner else None
            model_id = store.model_id_for_key(key) if key else None
            if model_id is not None and store.vector_dim(model_id):
                break
            model_id = None
        if model_id is None:
            with_vectors = [m for m in sorted(store.models(), key=lambda m: -m["id"]) if store.vector_dim(m["id"])]
            if not with_vectors:
                raise CacheError(f"the cache {store.path} holds no image vectors yet: run `rtagx tag PATH` first")
            model_id = with_vectors[0]["id"]  # the newest model
            passed_over = tuple(m.get("name") or m["key"] for m in with_vectors[1:])
    info = store.model_info(model_id)
    return CachedModel(model_id, info["key"], info.get("name") or "", store.vector_dim(model_id) or 0, passed_over)


def query_vector(
    store: Store, model: CachedModel, terms: Sequence[QueryTerm], settings: Settings, timings: dict[str, float]
) -> np.ndarray:
    """The normalized weighted sum of the terms' unit vectors (float32)."""
    texts = [t.value for t in terms if t.kind == "text"]
    vectors: dict[tuple[str, str], np.ndarray] = {}
    cached = store.text_vectors(model.id, texts)
    vectors.update({("text", k): v for k, v in cached.items()})
    missing_texts = [t for t in dict.fromkeys(texts) if t not in cached]
    images_to_embed: list[str] = []
    for t in terms:
        if t.kind != "image":
            continue
        cid = store.content_of(Path(t.value))
        if cid is not None and cid in store.contents_with_vectors(model.id, [cid]):
            vectors[("image", t.value)] = store.vectors(model.id, [cid], model.dim)[0]
        elif not os.path.isfile(t.value):
            raise UsageError(f"query image not found: {t.value}")
        else:
            images_to_embed.append(t.value)
    if missing_texts and not images_to_embed:
        started = time.perf_counter()
        tower = numpy_text_tower(store, model.id)
        if tower is not None:
            timings["load-numpy-text"] = time.perf_counter() - started
            started = time.perf_counter()
            encoded = as_cached(tower.encode_texts(missing_texts))
            timings["encode-query"] = time.perf_counter() - started
            vectors.update({("text", k): v for k, v in zip(missing_texts, encoded)})
            remember_text_vectors(store.path, model.id, missing_texts, encoded)
            missing_texts = []
    if missing_texts or images_to_embed:
        from rtagx.run.retag import cached_model_encoder  # imports the tagging machinery: only here

        started = time.perf_counter()
        encoder = cached_model_encoder(store, model.id, settings, text_only=not images_to_embed)
        timings["load-model"] = time.perf_counter() - started
        started = time.perf_counter()
        if missing_texts:
            encoded = as_cached(encoder.encode_texts(missing_texts))
            vectors.update({("text", k): v for k, v in zip(missing_texts, encoded)})
            remember_text_vectors(store.path, model.id, missing_texts, encoded)
        for image in dict.fromkeys(images_to_embed):
            vectors[("image", image)] = as_cached(embed_image(encoder, Path(image), settings))
        timings["encode-query"] = time.perf_counter() - started
    total = np.zeros(model.dim, dtype=np.float32)
    for t in terms:
        v = np.asarray(vectors[(t.kind, t.value)], dtype=np.float32)
        total += t.weight * v / max(float(np.linalg.norm(v)), 1e-12)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query's terms cancel out: nothing is left to search for")
    return total / norm


def as_cached(vectors: np.ndarray) -> np.ndarray:
    """Vectors rounded as the cache keeps them (float16), as float32: a query text encoded now
    scores exactly as it will when the next search reads it back from the cache, so near ties do
    not swap between the first and the second run."""
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def numpy_text_tower(store: Store, model_id: int) -> Any:
    """The model's text tower in numpy (no torch import: ~0.2 s instead of ~4 s), when the cache's
    record of the model's files shows them unchanged since ``tag`` resolved them (the check a no-op
    ``tag`` trusts) and the model has a standard CLIP text tower; else None (load it with torch)."""
    from rtagx.model.numpy_text import load_text_tower

    info = store.model_info(model_id)
    name = info.get("config_path") or info.get("name") or ""
    for pretrained in dict.fromkeys((info.get("pretrained"), info.get("checkpoint_path"))):
        remembered = remembered_identity(store, name, pretrained)
        if remembered is not None and remembered.key == info["key"]:
            return load_text_tower(info)
    return None


def embed_image(encoder: Any, path: Path, settings: Settings) -> np.ndarray:
    """Embed a query image the cache does not hold, with the same decode and encode stages as ``tag``."""
    from rtagx.imaging.decode import DEFAULT_MAX_MEGAPIXELS, PreprocessSpec
    from rtagx.run.scan import ScannedFile
    from rtagx.run.stages import FileWork, decode_file, encode_batch

    spec = PreprocessSpec.from_model(encoder.model)
    try:
        st = os.stat(path)
        work = FileWork(ScannedFile(path, st.st_size, st.st_mtime_ns, path.parent))
        array = decode_file(work, spec, settings.max_megapixels or DEFAULT_MAX_MEGAPIXELS)
    except FileSkip as e:  # the query itself is unusable: say why in one line (exit 2), as tag would
        raise UsageError(f"query image {path}: {e}") from None
    except OSError as e:
        raise UsageError(f"query image {path}: {e.strerror or e}") from None
    return encode_batch(encoder, [array], spec)[0]


def remember_text_vectors(cache: Path, model_id: int, texts: Sequence[str], vectors: np.ndarray) -> None:
    """Cache query vectors like prompts, if the cache is free right now (a search never waits for a
    running ``tag``: the next search encodes the text again instead)."""
    lock = WriterLock(cache)  # taken before opening to write, which may migrate the cache
    try:
        lock.acquire(wait=False)
    except CacheError:  # LockBusyError too
        return
    try:
        with open_store(cache) as store:
            store.put_text_vectors(model_id, texts, vectors)
    except CacheError:
        pass
    finally:
        lock.release()


def in_scope(key: bytes, prefixes: Sequence[tuple[bytes, bytes]]) -> bool:
    """Is a cached path one of the scope paths or below one of them?"""
    return not prefixes or any(key == exact or key.startswith(folder) for exact, folder in prefixes)


def scope_prefixes(scope: Sequence[Path]) -> list[tuple[bytes, bytes]]:
    return [(path_key(p), path_key(p).rstrip(b"/") + b"/") for p in scope]


def scope_contents(store: Store, scope: Sequence[Path]) -> np.ndarray | None:
    """Sorted content ids of the files under the scope paths (None: the whole cache)."""
    if not scope:
        return None
    ids: set[int] = set()
    for p in scope:
        ids.update(r.content_id for r in store.files_under(p).values())
    return np.array(sorted(ids), dtype=np.int64)


#: Below this many table rows one process ranks; above, one process per core ranks a part each.
PARALLEL_ROWS = 200_000


def rank_all(
    store: Store, model: CachedModel, query: np.ndarray, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every cached vector (in scope) with the query: (content ids, scores).

    Turning SQLite rows into Python objects, not arithmetic, is most of the time (~2 s of ~3 s per
    million vectors here), and it holds the GIL: large caches are therefore split into rowid ranges
    ranked by one forked process per core, each with its own read-only connection."""
    first, last = store.vector_rowids()
    parts = min(os.cpu_count() or 1, 4)
    if last - first < PARALLEL_ROWS or parts < 2:
        return rank_part(store.path, model.id, model.dim, query, allowed, None)
    import multiprocessing

    step = (last - first) // parts + 1
    ranges = [(first + k * step, first + (k + 1) * step) for k in range(parts)]
    with multiprocessing.get_context("fork").Pool(parts) as pool:
        results = pool.starmap(rank_part, [(store.path, model.id, model.dim, query, allowed, r) for r in ranges])
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def rank_part(
    cache: Path,
    model_id: int,
    dim: int,
    query: np.ndarray,
    allowed: np.ndarray | None,
    rowids: tuple[int, int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the vectors in one rowid range (None: all), with a connection of its own."""
    from rtagx.model.numpy_text import one_blas_thread

    id_blocks: list[np.ndarray] = []
    score_blocks: list[np.ndarray] = []
    buffer = np.empty((0, dim), np.float32)
    with open_store(cache, readonly=True) as store, one_blas_thread():  # a matrix-vector product is memory-bound
        for ids, rows in store.iter_vectors(model_id, dim, rowids=rowids):
            if allowed is not None:
                keep = np.isin(ids, allowed, assume_unique=True)
                if not keep.any():
                    continue
                ids, rows = ids[keep], rows[keep]
            if len(buffer) < len(rows):
                buffer = np.empty((len(rows), dim), np.float32)
            block = buffer[: len(rows)]
            np.copyto(block, rows)  # float16 -> float32 into one reused buffer
            score_blocks.append(block @ query)
            id_blocks.append(ids)
    if not id_blocks:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(id_blocks), np.concatenate(score_blocks)


def best_files(
    store: Store,
    ids: np.ndarray,
    scores: np.ndarray,
    top: int,
    min_score: float | None,
    scope: Sequence[Path],
) -> list[Hit]:
    """The ``top`` best files still on disk (a content held by two files gives two hits)."""
    prefixes = scope_prefixes(scope)
    hits: list[Hit] = []
    order = np.argsort(-scores, kind="stable")
    start, step = 0, max(4 * top, 64)
    while len(hits) < top and start < len(order):
        # a content may have no file left in scope (pruned, moved): look further in steps
        chunk = order[start : start + step]
        start += step
        if min_score is not None:
            chunk = chunk[scores[chunk] >= min_score]
        if not len(chunk):
            break
        by_content: dict[int, list[FileRecord]] = {}
        for rec in store.files_with_contents(int(i) for i in ids[chunk]):
            if in_scope(rec.path, prefixes):
                by_content.setdefault(rec.content_id, []).append(rec)
        for i in chunk:
            for rec in sorted(by_content.get(int(ids[i]), []), key=lambda r: r.path):
                if len(hits) >= top:
                    break
                if os.path.lexists(rec.path):
                    hits.append(Hit(len(hits) + 1, key_path(rec.path), float(scores[i]), int(ids[i])))
        step *= 4
    return hits


def search(
    tokens: Sequence[str],
    settings: Settings,
    *,
    scope: Sequence[Path] = (),
    like: Sequence[Path] = (),
    top: int = 20,
    min_score: float | None = None,
) -> SearchResult:
    """Rank the cached images under ``scope`` (default: every cached image) against the query."""
    timings: dict[str, float] = {}
    terms = parse_query(tokens, like)
    scope = [Path(os.path.abspath(os.path.expanduser(p))) for p in scope]
    for p in scope:
        if not os.path.lexists(p):
            raise UsageError(f"path not found: {p}")
    with open_store(settings.cache_path(), readonly=True) as store:
        model = choose_model(store, settings, scope)
        query = query_vector(store, model, terms, settings, timings)
        started = time.perf_counter()
        allowed = scope_contents(store, scope)
        if allowed is not None and not len(allowed):
            raise UsageError(f"no cached images under {', '.join(map(str, scope))}: run `rtagx tag` on them first")
        ids, scores = rank_all(store, model, query, allowed)
        timings["rank"] = time.perf_counter() - started
        started = time.perf_counter()
        hits = best_files(store, ids, scores, top, min_score, scope)
        timings["files"] = time.perf_counter() - started
    return SearchResult(hits, terms, model, len(ids), timings)
