"""The stages of a run as plain functions over plain data, so that any executor can compose them:
the local one (``run/local.py``: threads and bounded queues) or a distributed engine.

    scan (run/scan.py: ScannedFile) -> diff_with_cache (FileWork: cached or to embed)
    -> decode_file (np.ndarray, HWC uint8 at the model's size) -> encode_batch (vectors)
    -> store_batch (content ids) -> score and write (run/tagger.py: FileOutcome)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtagx.cache.store import FileRecord, Store, fingerprint_file, path_key
from rtagx.imaging import decode
from rtagx.model.encoder import Encoder
from rtagx.run.scan import ScannedFile


@dataclass
class FileWork:
    """One file on its way through the stages: its scan entry, and once known its content id in the
    cache, its fingerprint and whether its vector was reused from another file of the same content."""

    file: ScannedFile
    content_id: int | None = None
    fingerprint: str | None = None
    reused: bool = False


@dataclass
class Skip:
    """A file a stage could not handle, with the reason counted in the summary."""

    path: Path
    reason: str
    detail: str


@dataclass
class Diff:
    """What the cache already knows: files whose vectors are cached, files to embed, files skipped."""

    cached: list[FileWork] = field(default_factory=list)
    to_embed: list[FileWork] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


def diff_with_cache(
    store: Store, model_id: int, scanned: list[ScannedFile], known: dict[bytes, FileRecord], *, dry_run: bool = False
) -> Diff:
    """Split scanned files into those whose vector this model already has (same path, size and mtime,
    or the same content under another name) and those to embed."""
    diff = Diff()
    maybe_cached: list[FileWork] = []
    new: list[FileWork] = []
    for item in scanned:
        rec = known.get(path_key(item.path))
        if rec is not None and rec.size == item.size and rec.mtime_ns == item.mtime_ns:
            maybe_cached.append(FileWork(item, rec.content_id, rec.fingerprint))
        else:
            new.append(FileWork(item))
    have = store.contents_with_vectors(model_id, [w.content_id for w in maybe_cached if w.content_id])
    diff.to_embed = [w for w in maybe_cached if w.content_id not in have]
    diff.cached = [w for w in maybe_cached if w.content_id in have]
    fresh_rows: list[tuple[Path, int, int, str]] = []
    fresh_ids: list[int | None] = []
    for w in new:
        try:
            w.fingerprint = fingerprint_file(w.file.path, w.file.size)
        except FileNotFoundError:
            diff.skipped.append(Skip(w.file.path, "missing", "file vanished during the run"))
            continue
        except PermissionError as e:
            diff.skipped.append(Skip(w.file.path, "permission-denied", e.strerror or "permission denied"))
            continue
        except OSError as e:
            diff.skipped.append(Skip(w.file.path, "unreadable", e.strerror or str(e)))
            continue
        cid = store.content_for_fingerprint(w.fingerprint)
        if cid is not None and cid in store.contents_with_vectors(model_id, [cid]):
            w.content_id, w.reused = cid, True
            fresh_rows.append((w.file.path, w.file.size, w.file.mtime_ns, w.fingerprint))
            fresh_ids.append(cid)
            diff.cached.append(w)
        else:
            diff.to_embed.append(w)
    if fresh_rows and not dry_run:
        store.put_files(fresh_rows, fresh_ids)
    return diff


def decode_file(work: FileWork, spec: decode.PreprocessSpec, max_megapixels: float) -> np.ndarray:
    """Open one image upright, in sRGB, at the model's input size (raises FileSkip with a reason)."""
    return decode.decode_for_model(work.file.path, spec, max_megapixels=max_megapixels)


def encode_batch(encoder: Encoder, arrays: list[np.ndarray], spec: decode.PreprocessSpec) -> np.ndarray:
    """One batch of decoded images through the image tower: L2-normalised vectors, one row each."""
    return encoder.encode_images(decode.to_model_batch(arrays, spec))


def store_batch(store: Store, model_id: int, works: list[FileWork], vectors: np.ndarray) -> list[int]:
    """Record the files and their vectors in the cache; sets each work's content id."""
    files = [(w.file.path, w.file.size, w.file.mtime_ns, w.fingerprint or "") for w in works]
    ids = store.put_files(files)  # allocates content ids for new fingerprints
    for w, cid in zip(works, ids):
        w.content_id = cid
    store.put_vectors(model_id, ids, vectors, files)
    return ids


def ensure_fingerprints(works: list[FileWork]) -> None:
    """Fingerprint the files that have none yet (a vanished file gets an empty one)."""
    for w in works:
        if w.fingerprint is None:
            w.fingerprint = fingerprint_file(w.file.path, w.file.size) if os.path.exists(w.file.path) else ""


def _sibling_key(path: Path) -> tuple[str, str]:
    return (str(path.parent), path.stem.lower())


def pair_raw_siblings(
    to_embed: list[FileWork], cached: list[FileWork]
) -> tuple[list[FileWork], list[tuple[FileWork, FileWork]]]:
    """Split off RAW files whose same-stem sibling (IMG_1.CR2 beside IMG_1.JPG) is in this run.

    Returns the works still to embed and (raw, sibling) pairs; the RAW takes the sibling's vector.
    The sibling is the camera's own rendering of the same exposure, so its vector describes the RAW
    as well as a demosaic would, at a fraction of the decode time.
    """
    raw_exts = decode.RAW_EXTENSIONS
    leaders: dict[tuple[str, str], FileWork] = {}
    for w in list(cached) + list(to_embed):
        if w.file.path.suffix.lower() not in raw_exts:
            leaders.setdefault(_sibling_key(w.file.path), w)
    rest: list[FileWork] = []
    pairs: list[tuple[FileWork, FileWork]] = []
    for w in to_embed:
        leader = leaders.get(_sibling_key(w.file.path)) if w.file.path.suffix.lower() in raw_exts else None
        if leader is not None:
            pairs.append((w, leader))
        else:
            rest.append(w)
    return rest, pairs
