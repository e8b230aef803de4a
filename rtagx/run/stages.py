"""The stages of a run as plain functions over plain data, so that any executor can compose them:
the local one (``run/local.py``: threads and bounded queues) or a distributed engine.

    scan (run/scan.py: ScannedFile) -> diff_with_cache (FileWork: cached or to embed)
    -> decode_file (np.ndarray, HWC uint8 at the model's size; decode_for_models: one decode, one
       array per model) -> encode_batch (vectors)
    -> store_batch (content ids) -> score and write (run/tagger.py: FileOutcome)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtagx.cache.fingerprint import fingerprint_file
from rtagx.cache.store import Failure, FileRecord, FileRow, Store, path_key
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


#: Skip reasons no retry can change while the file stays as it is: remembered with the file's size
#: and mtime, so a no-op run reports them without loading the model (``--rehash`` retries them).
PERMANENT_FAILURES = frozenset({"corrupt", "truncated", "empty", "not-an-image", "unsupported-format"})


def file_row(item: ScannedFile, fingerprint: str) -> FileRow:
    return FileRow(item.path, item.size, item.mtime_ns, fingerprint, item.ctime_ns, item.inode)


def same_identity(rec: FileRecord, item: ScannedFile) -> bool:
    """The scanned file was not touched since ``rec`` was recorded (:meth:`FileRecord.same_identity`)."""
    return rec.same_identity(item.size, item.mtime_ns, item.ctime_ns, item.inode)


def fingerprint_or_skip(item: ScannedFile) -> str | Skip:
    """The file's content fingerprint, or why it could not be read."""
    try:
        return fingerprint_file(item.path)
    except FileNotFoundError:
        return Skip(item.path, "missing", "file vanished during the run")
    except PermissionError as e:
        return Skip(item.path, "permission-denied", e.strerror or "permission denied")
    except OSError as e:
        return Skip(item.path, "unreadable", e.strerror or str(e))


def fingerprint_all(items: list[ScannedFile]) -> list[str | Skip]:
    """Fingerprints of many files, on every core: hashing releases the GIL, and a first run over a
    library hashes every file (~9 ms per 12 MP JPEG on one core) before anything is decoded."""
    if len(items) < 2:
        return [fingerprint_or_skip(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 2), thread_name_prefix="rtagx-hash")
    try:  # in slices: at most a slice of futures alive, whatever the library's size
        out: list[str | Skip] = []
        for start in range(0, len(items), 1024):
            out.extend(pool.map(fingerprint_or_skip, items[start : start + 1024]))
        return out
    finally:  # on Ctrl-C, drop the files not started yet instead of hashing them all first
        pool.shutdown(wait=True, cancel_futures=True)


def diff_with_cache(
    store: Store,
    model_id: int,
    scanned: list[ScannedFile],
    known: dict[bytes, FileRecord],
    *,
    failures: dict[bytes, Failure] | None = None,
    rehash: bool = False,
    dry_run: bool = False,
) -> Diff:
    """Split scanned files into those whose vector this model already has and those to embed.

    A file is known without reading it when its identity (size, mtime, ctime, inode) is as recorded.
    Otherwise (or with ``rehash``) its image data is hashed: the content it had before (only its
    metadata changed), or the content of another file (a copy, a rename), keeps its vector. A file
    that failed for good with the same size and mtime is skipped again with its remembered reason,
    unless the decoder changed since. A vector from an older decoder revision stands when the file
    decodes as it did then (:func:`current_vectors`); otherwise the file is embedded again."""
    diff = Diff()
    failures = failures or {}
    maybe_cached: list[FileWork] = []
    new: list[tuple[FileWork, FileRecord | None]] = []
    backfill: list[tuple[bytes, int, int]] = []
    stale_failures: list[bytes] = []
    for item in scanned:
        key = path_key(item.path)
        failed = failures.get(key)
        if failed is not None:
            same = (failed.size, failed.mtime_ns) == (item.size, item.mtime_ns)
            if not rehash and same and failed.decoder >= decode.DECODER_REVISION:
                diff.skipped.append(
                    Skip(item.path, failed.reason, f"{failed.detail} (remembered until the file changes)")
                )
                continue
            stale_failures.append(key)
        rec = known.get(key)
        if rec is not None and not rehash and same_identity(rec, item):
            maybe_cached.append(FileWork(item, rec.content_id, rec.fingerprint))
            if rec.ctime_ns == 0:
                backfill.append((key, item.ctime_ns, item.inode))
        else:
            new.append((FileWork(item), rec))
    have = current_vectors(store, model_id, maybe_cached, dry_run=dry_run)
    diff.to_embed = [w for w in maybe_cached if w.content_id not in have]
    diff.cached = [w for w in maybe_cached if w.content_id in have]
    fresh_rows: list[FileRow] = []
    fresh_ids: list[int | None] = []
    for (w, rec), fingerprint in zip(new, fingerprint_all([w.file for w, _ in new])):
        if isinstance(fingerprint, Skip):
            diff.skipped.append(fingerprint)
            continue
        w.fingerprint = fingerprint
        if rec is not None and rec.fingerprint == fingerprint:
            cid: int | None = rec.content_id  # the same image data: only metadata (or nothing) changed
        else:
            cid = store.content_for_fingerprint(fingerprint)
        if cid is not None and cid in current_vectors(store, model_id, [FileWork(w.file, cid)], dry_run=dry_run):
            w.content_id = cid
            w.reused = rec is None or rec.content_id != cid
            fresh_rows.append(file_row(w.file, fingerprint))
            fresh_ids.append(cid)
            diff.cached.append(w)
        else:
            diff.to_embed.append(w)
    if not dry_run:
        if fresh_rows:
            # a file pointing at its RAW sibling's content must not alias its own fingerprint to it
            store.put_files(fresh_rows, fresh_ids, alias=False)
        if backfill:
            store.set_identities(backfill)
        if stale_failures:
            store.forget_failures(stale_failures)
    return diff


def current_vectors(store: Store, model_id: int, works: Sequence[FileWork], *, dry_run: bool = False) -> set[int]:
    """The contents among ``works`` whose vector from this model still stands: made by the current
    decoder revision, or by an older one for a file that the current decoder gives the same pixels
    (checked from its header once; the vector is then marked current unless ``dry_run``)."""
    revisions = store.vector_decoders(model_id, [w.content_id for w in works if w.content_id is not None])
    current = {cid for cid, rev in revisions.items() if rev >= decode.DECODER_REVISION}
    # A content is stale when any of its files decodes differently now: a RAW file that follows its
    # HEIC sibling shares the HEIC's content, and only the HEIC's pixels tell.
    differs: dict[int, bool] = {}
    for w in works:
        cid = w.content_id
        if cid is None or cid not in revisions or cid in current or differs.get(cid):
            continue
        differs[cid] = decode.decoded_differently(w.file.path, revisions[cid])
    kept = [cid for cid, stale in differs.items() if not stale]
    if kept and not dry_run:
        store.mark_decoder(model_id, kept, decode.DECODER_REVISION)
    return current | set(kept)


def decode_file(work: FileWork, spec: decode.PreprocessSpec, max_megapixels: float) -> np.ndarray:
    """Open one image upright, in sRGB, at the model's input size (raises FileSkip with a reason)."""
    return decode.decode_for_model(work.file.path, spec, max_megapixels=max_megapixels)


def decode_for_models(path: Path, specs: list[decode.PreprocessSpec], max_megapixels: float) -> list[np.ndarray]:
    """Open one image once and give each model its own input (several models in one run): see
    :func:`rtagx.imaging.decode.decode_for_models`."""
    return decode.decode_for_models(path, specs, max_megapixels=max_megapixels)


def encode_batch(encoder: Encoder, arrays: list[np.ndarray], spec: decode.PreprocessSpec) -> np.ndarray:
    """One batch of decoded images through the image tower: L2-normalised vectors, one row each
    (a trained tagger takes the arrays as they are and gives its probabilities)."""
    encode_arrays = getattr(encoder, "encode_arrays", None)
    if encode_arrays is not None:
        return np.asarray(encode_arrays(arrays))
    return encoder.encode_images(decode.to_model_batch(arrays, spec))


def store_batch(store: Store, model_id: int, works: list[FileWork], vectors: np.ndarray) -> list[int]:
    """Record the files and their vectors in the cache; sets each work's content id."""
    ids = store.put_files([file_row(w.file, w.fingerprint or "") for w in works])  # new fingerprints: new contents
    for w, cid in zip(works, ids):
        w.content_id = cid
    store.put_vectors(model_id, ids, vectors, decoder=decode.DECODER_REVISION)
    return ids


def ensure_fingerprints(works: list[FileWork]) -> None:
    """Fingerprint the files that have none yet (a vanished file gets an empty one)."""
    for w in works:
        if w.fingerprint is None:
            w.fingerprint = fingerprint_file(w.file.path) if os.path.exists(w.file.path) else ""


def _sibling_key(path: Path) -> tuple[str, str]:
    return (str(path.parent), path.stem.lower())


def pair_raw_siblings(
    store: Store, model_id: int, diff: Diff, *, dry_run: bool = False
) -> list[tuple[FileWork, FileWork]]:
    """Decide, per path, which RAW files take the vector of their same-stem sibling in this run
    (IMG_1.CR2 beside IMG_1.JPG); returns (raw, sibling) pairs and takes them out of ``diff``.

    The sibling is the camera's own rendering of the same exposure, so its vector describes the RAW
    as well as a demosaic would, at a fraction of the decode time. Pairing belongs to the path, not
    to the content: byte-identical copies of one RAW file share a fingerprint, and a copy with a
    sibling must follow that sibling while a copy without one gets the RAW's own vector. So a cached
    RAW file that follows another content than its sibling's now is paired again, and one that
    follows a sibling no longer there is looked up by its own fingerprint (or embedded).
    """
    raw_exts = decode.RAW_EXTENSIONS
    leaders: dict[tuple[str, str], FileWork] = {}
    embedded_again = {id(w) for w in diff.to_embed if w.content_id is not None}  # a newer decoder
    for w in diff.cached + diff.to_embed:
        if w.file.path.suffix.lower() not in raw_exts:
            leaders.setdefault(_sibling_key(w.file.path), w)
    pairs: list[tuple[FileWork, FileWork]] = []
    to_embed: list[FileWork] = []
    for w in diff.to_embed:
        leader = leaders.get(_sibling_key(w.file.path)) if w.file.path.suffix.lower() in raw_exts else None
        if leader is not None:
            pairs.append((w, leader))
        else:
            to_embed.append(w)
    cached: list[FileWork] = []
    alone: list[FileWork] = []
    for w in diff.cached:
        if w.file.path.suffix.lower() not in raw_exts:
            cached.append(w)
            continue
        leader = leaders.get(_sibling_key(w.file.path))
        if leader is None:
            alone.append(w)
        elif leader.content_id is not None and leader.content_id == w.content_id and id(leader) not in embedded_again:
            cached.append(w)  # follows its sibling already
        else:
            pairs.append((w, leader))
    if alone:
        own = store.contents_for_fingerprints([w.fingerprint or "" for w in alone])
        have = store.contents_with_vectors(model_id, own.values())
        relinked: list[FileWork] = []
        for w in alone:
            cid = own.get(w.fingerprint or "")
            if cid == w.content_id:
                cached.append(w)  # its own content
            elif cid is not None and cid in have:
                w.content_id, w.reused = cid, True
                cached.append(w)
                relinked.append(w)
            else:
                w.content_id, w.reused = None, False
                to_embed.append(w)
        if relinked and not dry_run:
            rows = [file_row(w.file, w.fingerprint or "") for w in relinked]
            store.put_files(rows, [w.content_id for w in relinked], alias=False)
    diff.cached, diff.to_embed = cached, to_embed
    return pairs
