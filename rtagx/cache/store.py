"""The vector cache: one SQLite file holding image vectors, prompt vectors and what rtagx wrote.

Layout and why:

* ``files`` maps a path to its last seen identity (size, mtime_ns, ctime_ns, inode) and its content
  fingerprint (``cache/fingerprint.py``: a hash of the image data, not of the metadata). An
  unchanged identity means an unchanged file: no read at all on a no-op run. Any change (a keyword
  edit by another program, ``touch -r``, a copy over the file) re-hashes the image data: equal
  fingerprints keep the vector, a new one is embedded.
* ``fingerprints`` maps fingerprints to a ``content_id``. Vectors belong to content, not to paths,
  so a renamed or moved file, a copy, and a file whose keywords any program rewrote all reuse one
  vector. A RAW file that takes its JPEG sibling's vector points at the sibling's content without
  aliasing its own fingerprint: a copy of that RAW without the sibling gets a vector of its own.
* ``vectors`` is keyed by (model, content): vectors of two models never mix, and an old model's
  vectors stay until pruned. Stored as float16 (1 KiB per ViT-B/16 vector; the cosine error of
  float16 rounding is ~1e-4, far below any threshold step that matters).
* ``text_vectors`` caches prompt vectors by (model, exact prompt text).
* ``written`` remembers the keywords rtagx chose for each file and the settings they came from,
  so an unchanged file under unchanged settings is skipped without reading it.
* ``roots`` remembers each folder (or single file) ``tag`` processed and its settings, for
  ``retag`` with no paths, ``untag`` and ``show``. A root is recorded when the run starts.
* ``failures`` remembers files that failed for a reason retrying cannot fix (corrupt, not an image)
  with the identity they had, so a no-op run does not load the model to fail on them again.
* ``untagged`` remembers the folders and files ``untag`` cleared inside a root, which later runs over
  the root leave alone, and the paths inside them that ``tag`` was asked for again since (the
  deepest entry above a file decides: see :func:`is_untagged`).
* ``reviews`` holds a person's decisions from ``rtagx review``: a tag accepted or rejected on a
  content (not a path: they survive renames and hold for copies), with the score it had then.

Paths are stored as bytes (``os.fsencode``) so that any file name the OS allows, including ones
that are not valid UTF-8, round-trips. The database runs in WAL mode; each batch is one
transaction, so a killed run keeps every finished batch. One writer at a time is enforced with an
advisory lock file beside the database (see :class:`WriterLock`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rtagx.cache.fingerprint import fingerprint_file
from rtagx.errors import CacheError, LockBusyError

SCHEMA_VERSION = 7

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE NOT NULL,
    info TEXT NOT NULL,
    dim INTEGER,
    logit_scale REAL,
    logit_bias REAL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE contents (id INTEGER PRIMARY KEY);
CREATE TABLE fingerprints (
    fingerprint TEXT PRIMARY KEY,
    content_id INTEGER NOT NULL REFERENCES contents(id)
) WITHOUT ROWID;
CREATE TABLE files (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    content_id INTEGER NOT NULL,
    seen REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX files_content ON files(content_id);
CREATE TABLE vectors (
    model_id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, content_id)
) WITHOUT ROWID;
CREATE TABLE text_vectors (
    model_id INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, prompt)
) WITHOUT ROWID;
CREATE TABLE roots (path BLOB PRIMARY KEY, settings TEXT NOT NULL, last_run REAL NOT NULL) WITHOUT ROWID;
"""

_SCHEMA_V2 = """
CREATE TABLE written (
    path BLOB PRIMARY KEY,
    model_id INTEGER NOT NULL,
    settings_hash TEXT NOT NULL,
    keywords TEXT NOT NULL,
    hierarchical TEXT NOT NULL,
    tags TEXT NOT NULL,
    target TEXT NOT NULL,
    written_to BLOB,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 3: the vector tables become rowid tables. In a WITHOUT ROWID table a row lives in an index
# b-tree page, where SQLite keeps at most ~1/4 page inline: a 1 KiB ViT-B/16 vector spilled into an
# overflow page of its own and each vector cost ~4.7 KiB on disk (470 MB per 100k images). A rowid
# table keeps rows of up to a page inline; the primary key stays unique through its own index.
# The files(content_id) index goes: only `cache prune` looked files up by content (its NOT IN
# subqueries build a temporary index once), and it cost ~70 bytes per file.
_SCHEMA_V3 = """
DROP INDEX IF EXISTS files_content;
CREATE TABLE vectors_v3 (
    model_id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, content_id)
);
INSERT INTO vectors_v3 (model_id, content_id, vector) SELECT model_id, content_id, vector FROM vectors;
DROP TABLE vectors;
ALTER TABLE vectors_v3 RENAME TO vectors;
CREATE TABLE text_vectors_v3 (
    model_id INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_id, prompt)
);
INSERT INTO text_vectors_v3 (model_id, prompt, vector) SELECT model_id, prompt, vector FROM text_vectors;
DROP TABLE text_vectors;
ALTER TABLE text_vectors_v3 RENAME TO text_vectors;
"""

# Version 4: files also remember ctime and inode (``touch -r`` restores size and mtime, not those),
# and permanent failures are remembered. Fingerprints become hashes of the image data; the rows of
# version 3 keep their old sampled fingerprints (still valid for their own file, never equal to a
# new-style one), and their ctime/inode (0: unknown) are filled in on the next run that sees them.
_SCHEMA_V4 = """
ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE files ADD COLUMN inode INTEGER NOT NULL DEFAULT 0;
CREATE TABLE failures (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 5: paths ``untag`` cleared inside a root (untagged = 1), which later runs over the root leave
# alone, and paths inside those that ``tag`` was asked for again (untagged = 0).
_SCHEMA_V5 = """
CREATE TABLE untagged (path BLOB PRIMARY KEY, untagged INTEGER NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
"""

# Version 6: a person's review decisions (``rtagx review``): a tag accepted (+1) or rejected (-1) on
# a content, not a path, so a decision survives renames and moves and holds for every copy. ``score``
# is the tag's score when the person decided (what ``calibrate --from-reviews`` fits thresholds on).
_SCHEMA_V6 = """
CREATE TABLE IF NOT EXISTS reviews (
    content_id INTEGER NOT NULL,
    tag TEXT NOT NULL,
    decision INTEGER NOT NULL,
    model_id INTEGER,
    score REAL,
    at REAL NOT NULL,
    PRIMARY KEY (content_id, tag)
) WITHOUT ROWID;
"""

# Version 7: each vector and each remembered failure records the decoder revision that made it
# (``rtagx.imaging.decode.DECODER_REVISION``; rows from before are revision 1), so that a decoding fix
# reaches files already cached: their vectors are checked once and embedded again where it matters.
_SCHEMA_V7 = """
ALTER TABLE vectors ADD COLUMN decoder INTEGER NOT NULL DEFAULT 1;
ALTER TABLE failures ADD COLUMN decoder INTEGER NOT NULL DEFAULT 1;
"""

# Forward migrations: MIGRATIONS[n] brings a version-n database to version n+1.
MIGRATIONS: dict[int, str] = {
    0: _SCHEMA_V1,
    1: _SCHEMA_V2,
    2: _SCHEMA_V3,
    3: _SCHEMA_V4,
    4: _SCHEMA_V5,
    5: _SCHEMA_V6,
    6: _SCHEMA_V7,
}


# New caches use 32 KiB pages: a ~1 KiB vector row then wastes ~3% of a page instead of ~25% at
# SQLite's default 4 KiB (3 ViT-B/16 rows fit in a 4 KiB page, 15 in 16 KiB, 31 in 32 KiB). Measured
# on 100k 512-dim vectors: 137 MB of vector pages at 4 KiB, 109 MB at 16 KiB, 106 MB at 32 KiB.
PAGE_SIZE = 32768

# ``written`` rows store the common cases compactly (a 100k library writes 100k rows): keywords equal
# to the chosen tags' names and a hierarchy equal to the keywords are stored as this marker (never
# valid JSON), and ``written_to`` equal to the file itself as an empty blob.
_SAME = "="


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def path_key(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(os.fspath(path))


def key_path(key: bytes) -> Path:
    return Path(os.fsdecode(key))


def pack_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float16).tobytes()


def unpack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), dim).astype(np.float32)


def _parent_key(key: bytes) -> bytes | None:
    parent = key.rsplit(b"/", 1)[0] or b"/"
    return None if parent == key else parent


def is_untagged(key: bytes | None, marks: dict[bytes, bool]) -> bool:
    """Whether the file or folder ``key`` is left alone: the deepest entry of ``marks`` (path key ->
    untagged) at or above it says so; with none, it is not."""
    while marks and key is not None:
        if key in marks:
            return marks[key]
        key = _parent_key(key)
    return False


def with_mark(marks: dict[bytes, bool], key: bytes, untagged: bool) -> dict[bytes, bool]:
    """``marks`` after ``untag`` (``untagged``) or an explicit ``tag`` (not) of ``key``. ``untag``
    covers everything inside ``key``: what the entries inside it said gives way. ``tag`` of a path
    clears what is above it for that path only: a folder untagged inside it stays untagged. Entries
    that say what the entries above them say are dropped."""
    prefix = key.rstrip(b"/") + b"/"
    if untagged:
        marks = {k: v for k, v in marks.items() if k != key and not k.startswith(prefix)}
    marks = {**marks, key: untagged}
    out: dict[bytes, bool] = {}
    for k in sorted(marks, key=len):  # a folder's entry before the entries inside it
        if marks[k] != is_untagged(_parent_key(k), out):
            out[k] = marks[k]
    return out


class FileRecord(NamedTuple):  # a tuple: a no-op run over 100k files builds 100k of these
    path: bytes
    size: int
    mtime_ns: int
    fingerprint: str
    content_id: int
    ctime_ns: int = 0  # 0: not known yet (a row from a version-3 cache)
    inode: int = 0

    def same_identity(self, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> bool:
        """The file was not touched since it was recorded: size, mtime, ctime and inode as recorded
        (``touch -r`` restores size and mtime, never ctime). A row from a version-3 cache knows no
        ctime or inode (0) and is judged on size and mtime. The one rule for every reader."""
        if self.size != size or self.mtime_ns != mtime_ns:
            return False
        return self.ctime_ns == 0 or (self.ctime_ns == ctime_ns and self.inode == inode)


class Failure(NamedTuple):
    """A file that failed for good, as remembered: skipped again until it changes or the decoder does."""

    size: int
    mtime_ns: int
    reason: str
    detail: str
    decoder: int = 1


class FileRow(NamedTuple):
    """A file's identity to record: what it was when rtagx last looked at it."""

    path: Path
    size: int
    mtime_ns: int
    fingerprint: str
    ctime_ns: int = 0
    inode: int = 0


_FILE_COLUMNS = "path, size, mtime_ns, fingerprint, content_id, ctime_ns, inode"
_FILE_COLUMNS_V3 = "path, size, mtime_ns, fingerprint, content_id, 0, 0"


class WrittenRecord(NamedTuple):
    path: bytes
    model_id: int
    settings_hash: str
    keywords: list[str]
    hierarchical: list[str]
    target: str
    written_to: bytes | None
    size: int
    mtime_ns: int
    tags: list[tuple[str, float]] = ()  # type: ignore[assignment]  # chosen tags with scores


class WriterLock:
    """One writer per cache: an advisory ``flock`` on ``<cache>.lock``, released by the OS on exit.

    A killed process never leaves a stale lock (the kernel drops flock locks with the process).
    """

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self, wait: bool = True, timeout: float | None = None, on_wait: Any = None) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CacheError(f"cannot create lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not wait:
                os.close(self._fd)
                self._fd = None
                raise LockBusyError(
                    f"another rtagx is using the cache {self.path.with_suffix('')} (lock {self.path}); "
                    f"try again later, or drop --no-wait to wait for it"
                ) from None
        if on_wait:
            on_wait()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    os.close(self._fd)
                    self._fd = None
                    raise LockBusyError(f"timed out waiting for the cache lock {self.path}") from None
                time.sleep(0.1)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Store:
    """The vector cache. Open with :func:`open_store`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self.lock = WriterLock(path)
        # a cache of an older schema opened read-only (``show``, ``cache stats``) is not migrated:
        # read what it has, with 0 (unknown) for the identity columns it lacks
        self._file_columns = _FILE_COLUMNS if self.schema_version() >= 4 else _FILE_COLUMNS_V3

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self.lock.release()
        with suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with self.conn:
                yield self.conn
        except sqlite3.Error as e:
            raise CacheError(f"cache {self.path} could not be written: {e}") from None

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- models ----------------------------------------------------------------------------------
    def find_model(self, key: str) -> int | None:
        """The id of a model identity already in the cache, or None (registers nothing)."""
        row = self.conn.execute("SELECT id FROM models WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def model_id(
        self,
        key: str,
        info: dict[str, Any] | None = None,
        *,
        dim: int | None = None,
        logit_scale: float | None = None,
        logit_bias: float | None = None,
    ) -> int:
        """The id of a model identity, registering it (and updating what we know) as needed."""
        now = time.time()
        row = self.conn.execute("SELECT id FROM models WHERE key = ?", (key,)).fetchone()
        with self.transaction() as c:
            if row is None:
                cur = c.execute(
                    "INSERT INTO models (key, info, dim, logit_scale, logit_bias, created, last_used) VALUES (?,?,?,?,?,?,?)",
                    (key, json.dumps(info or {}), dim, logit_scale, logit_bias, now, now),
                )
                return int(cur.lastrowid or 0)  # an INSERT always sets it
            model_id = int(row[0])
            c.execute("UPDATE models SET last_used = ? WHERE id = ?", (now, model_id))
            if info is not None:
                c.execute("UPDATE models SET info = ? WHERE id = ?", (json.dumps(info), model_id))
            if dim is not None:
                c.execute("UPDATE models SET dim = ? WHERE id = ?", (dim, model_id))
            if logit_scale is not None:
                c.execute(
                    "UPDATE models SET logit_scale = ?, logit_bias = ? WHERE id = ?",
                    (logit_scale, logit_bias, model_id),
                )
            return model_id

    def model_info(self, model_id: int) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT key, info, dim, logit_scale, logit_bias FROM models WHERE id = ?", (model_id,)
        ).fetchone()
        if row is None:
            raise CacheError(f"model #{model_id} is not in the cache {self.path}")
        info = json.loads(row[1])
        info.update({"id": model_id, "key": row[0], "dim": row[2], "logit_scale": row[3], "logit_bias": row[4]})
        return info

    def models(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.conn.execute("SELECT id FROM models ORDER BY id")]
        return [self.model_info(i) for i in ids]

    # -- small remembered values ---------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- files and contents ----------------------------------------------------------------------
    def files_under(self, root: Path) -> dict[bytes, FileRecord]:
        """Every known file below ``root`` (or ``root`` itself when it is a file), by path key."""
        key = path_key(root)
        prefix = key.rstrip(b"/") + b"/"
        rows = self.conn.execute(
            f"SELECT {self._file_columns} FROM files WHERE path = ? OR (path >= ? AND path < ?)",
            (key, prefix, prefix[:-1] + b"0"),
        )
        make = FileRecord._make
        return {r[0]: make(r) for r in rows}

    def file(self, path: Path) -> FileRecord | None:
        r = self.conn.execute(f"SELECT {self._file_columns} FROM files WHERE path = ?", (path_key(path),)).fetchone()
        return FileRecord(*r) if r else None

    def content_for_fingerprint(self, fingerprint: str) -> int | None:
        r = self.conn.execute("SELECT content_id FROM fingerprints WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return int(r[0]) if r else None

    def content_of(self, path: Path) -> int | None:
        """The cached content of a file: by path while its identity is as recorded, else by the
        fingerprint of its image data (a copy, a rename or an edit the cache has not recorded yet)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        rec = self.file(path)
        if rec is not None and rec.same_identity(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return rec.content_id
        try:
            return self.content_for_fingerprint(fingerprint_file(path))
        except OSError:
            return None

    def contents_for_fingerprints(self, fingerprints: Iterable[str]) -> dict[str, int]:
        """The content each known fingerprint names."""
        fps = list(set(fingerprints))
        found: dict[str, int] = {}
        for start in range(0, len(fps), 900):
            chunk = fps[start : start + 900]
            q = f"SELECT fingerprint, content_id FROM fingerprints WHERE fingerprint IN ({','.join('?' * len(chunk))})"
            found.update(self.conn.execute(q, chunk).fetchall())
        return found

    def _dense(self, ids: Sequence[int]) -> tuple[int, int] | None:
        """(lowest, highest) of ``ids`` when they fill their range densely enough that one range scan
        of the primary key beats many ``IN (...)`` lookups (a folder's contents were stored together:
        100k vectors come 15x faster), else None."""
        if len(ids) < 2000:
            return None
        lo, hi = min(ids), max(ids)
        return (lo, hi) if hi - lo < 4 * len(ids) else None

    def _vector_rows(self, model_id: int, content_ids: Iterable[int], columns: str) -> list[tuple[Any, ...]]:
        """``columns`` (content_id first) of this model's vectors for these contents: one range scan
        when the ids are dense, else chunks of ``IN (...)``."""
        ids = list(set(content_ids))
        span = self._dense(ids)
        if span is not None:
            q = f"SELECT {columns} FROM vectors WHERE model_id = ? AND content_id BETWEEN ? AND ?"
            wanted = set(ids)
            return [r for r in self.conn.execute(q, (model_id, *span)) if r[0] in wanted]
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            q = f"SELECT {columns} FROM vectors WHERE model_id = ? AND content_id IN ({','.join('?' * len(chunk))})"
            rows.extend(self.conn.execute(q, (model_id, *chunk)))
        return rows

    def contents_with_vectors(self, model_id: int, content_ids: Iterable[int]) -> set[int]:
        return {r[0] for r in self._vector_rows(model_id, content_ids, "content_id")}

    def vector_decoders(self, model_id: int, content_ids: Iterable[int]) -> dict[int, int]:
        """The decoder revision of each of these contents' vectors that this model has (schema 7 on)."""
        return {cid: rev for cid, rev in self._vector_rows(model_id, content_ids, "content_id, decoder")}

    def mark_decoder(self, model_id: int, content_ids: Sequence[int], decoder: int) -> None:
        """Record that these vectors stand for the current decoder too (their files decode as before)."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE vectors SET decoder = ? WHERE model_id = ? AND content_id = ?",
                [(decoder, model_id, cid) for cid in content_ids],
            )

    def _content_id(self, c: sqlite3.Connection, fingerprint: str) -> int:
        r = c.execute("SELECT content_id FROM fingerprints WHERE fingerprint = ?", (fingerprint,)).fetchone()
        if r:
            return int(r[0])
        content_id = int(c.execute("INSERT INTO contents DEFAULT VALUES").lastrowid or 0)
        c.execute("INSERT INTO fingerprints (fingerprint, content_id) VALUES (?, ?)", (fingerprint, content_id))
        return content_id

    def put_files(
        self,
        entries: Sequence[FileRow | tuple[Path, int, int, str]],
        content_ids: Sequence[int | None] | None = None,
        *,
        alias: bool = True,
    ) -> list[int]:
        """Record file identities; returns their content ids.

        A given content id is the file's content; with ``alias`` its fingerprint is also made to name
        that content (a file whose fingerprint already names another content keeps that mapping).
        Without ``alias`` the file points at the content and its fingerprint names nothing new (a RAW
        file that takes its sibling's vector)."""
        now = time.time()
        out: list[int] = []
        with self.transaction() as c:
            for i, entry in enumerate(entries):
                row = FileRow(*entry)
                cid = content_ids[i] if content_ids else None
                if cid is None:
                    cid = self._content_id(c, row.fingerprint)
                elif alias and row.fingerprint:
                    c.execute(
                        "INSERT OR IGNORE INTO fingerprints (fingerprint, content_id) VALUES (?, ?)",
                        (row.fingerprint, cid),
                    )
                c.execute(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, fingerprint, content_id, seen, ctime_ns, inode) "
                    "VALUES (?,?,?,?,?,?,?,?)",
                    (path_key(row.path), row.size, row.mtime_ns, row.fingerprint, cid, now, row.ctime_ns, row.inode),
                )
                out.append(cid)
        return out

    def set_identities(self, rows: Sequence[tuple[bytes, int, int]]) -> None:
        """Fill in (path key, ctime_ns, inode) of files whose size and mtime were just found unchanged."""
        with self.transaction() as c:
            c.executemany(
                "UPDATE files SET ctime_ns = ?, inode = ? WHERE path = ?", [(ct, ino, k) for k, ct, ino in rows]
            )

    # -- vectors ---------------------------------------------------------------------------------
    def put_vectors(self, model_id: int, content_ids: Sequence[int], vectors: np.ndarray, *, decoder: int = 1) -> None:
        """Store one batch of image vectors in one transaction. ``decoder``: the decoder revision that
        made them (1, the oldest, when unknown: a later run checks such files once)."""
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO vectors (model_id, content_id, vector, decoder) VALUES (?, ?, ?, ?)",
                [(model_id, cid, pack_vector(v), decoder) for cid, v in zip(content_ids, vectors)],
            )

    def vectors(self, model_id: int, content_ids: Sequence[int], dim: int) -> np.ndarray:
        """Vectors for the given contents, in order (float32). Missing ones raise CacheError."""
        found: dict[int, bytes] = {}
        unique = list(dict.fromkeys(content_ids))
        span = self._dense(unique)
        if span is not None:
            q = "SELECT content_id, vector FROM vectors WHERE model_id = ? AND content_id BETWEEN ? AND ?"
            found.update(self.conn.execute(q, (model_id, *span)).fetchall())
        rest = unique if span is None else []
        for start in range(0, len(rest), 900):
            chunk = rest[start : start + 900]
            q = f"SELECT content_id, vector FROM vectors WHERE model_id = ? AND content_id IN ({','.join('?' * len(chunk))})"
            found.update(self.conn.execute(q, (model_id, *chunk)).fetchall())
        missing = [c for c in unique if c not in found]
        if missing:
            raise CacheError(f"{len(missing)} vectors are missing from the cache")
        return unpack_vectors([found[c] for c in content_ids], dim)

    def text_vectors(self, model_id: int, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(prompts))
        for start in range(0, len(unique), 900):
            chunk = unique[start : start + 900]
            q = f"SELECT prompt, vector FROM text_vectors WHERE model_id = ? AND prompt IN ({','.join('?' * len(chunk))})"
            for prompt, blob in self.conn.execute(q, (model_id, *chunk)):
                out[prompt] = np.frombuffer(blob, dtype=np.float16).astype(np.float32)
        return out

    def put_text_vectors(self, model_id: int, prompts: Sequence[str], vectors: np.ndarray) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO text_vectors (model_id, prompt, vector) VALUES (?, ?, ?)",
                [(model_id, p, pack_vector(v)) for p, v in zip(prompts, vectors)],
            )

    # -- what rtagx wrote ------------------------------------------------------------------------
    def written(self, paths: Iterable[bytes]) -> dict[bytes, WrittenRecord]:
        keys = list(paths)
        out: dict[bytes, WrittenRecord] = {}
        for start in range(0, len(keys), 900):
            chunk = keys[start : start + 900]
            q = (
                "SELECT path, model_id, settings_hash, keywords, hierarchical, target, written_to, size, mtime_ns, tags "
                f"FROM written WHERE path IN ({','.join('?' * len(chunk))})"
            )
            rows = self.conn.execute(q, chunk).fetchall()
            if not rows:
                continue
            # one json.loads per chunk, not per row: a no-op run over 100k files reads 100k rows
            all_tags = json.loads("[" + ",".join(r[9] for r in rows) + "]")
            for r, tag_list in zip(rows, all_tags):
                tags = [(t, float(v)) for t, v in tag_list]
                keywords = [t for t, _ in tags] if r[3] == _SAME else json.loads(r[3])
                hierarchical = list(keywords) if r[4] == _SAME else json.loads(r[4])
                written_to = r[0] if r[6] == b"" else r[6]
                out[r[0]] = WrittenRecord(r[0], r[1], r[2], keywords, hierarchical, r[5], written_to, r[7], r[8], tags)
        return out

    def put_written(self, records: Sequence[WrittenRecord]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO written (path, model_id, settings_hash, keywords, hierarchical, tags, target, "
                "written_to, size, mtime_ns, at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.path,
                        r.model_id,
                        r.settings_hash,
                        _SAME if list(r.keywords) == [t for t, _ in r.tags] else _json(r.keywords),
                        _SAME if list(r.hierarchical) == list(r.keywords) else _json(r.hierarchical),
                        _json([[t, round(float(v), 5)] for t, v in r.tags]),
                        r.target,
                        b"" if r.written_to == r.path else r.written_to,
                        r.size,
                        r.mtime_ns,
                        now,
                    )
                    for r in records
                ],
            )

    def forget_written(self, keys: Sequence[bytes]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM written WHERE path = ?", [(k,) for k in keys])

    def forget_files(self, keys: Sequence[bytes]) -> None:
        """Drop deleted files (and what rtagx wrote into them); their vectors stay for a file of the
        same content that turns up under another name (a move), until ``prune``."""
        with self.transaction() as c:
            c.executemany("DELETE FROM files WHERE path = ?", [(k,) for k in keys])
            c.executemany("DELETE FROM written WHERE path = ?", [(k,) for k in keys])

    # -- permanent failures ----------------------------------------------------------------------
    def put_failures(self, rows: Sequence[tuple[Path, int, int, str, str]], *, decoder: int = 1) -> None:
        """Remember (path, size, mtime_ns, reason, detail) of files that failed for good, with the
        decoder revision that failed them."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO failures (path, size, mtime_ns, reason, detail, at, decoder) "
                "VALUES (?,?,?,?,?,?,?)",
                [(path_key(p), s, m, r, d, now, decoder) for p, s, m, r, d in rows],
            )

    def failures_under(self, root: Path) -> dict[bytes, Failure]:
        """Remembered failures below ``root`` (or of ``root`` itself)."""
        key = path_key(root)
        prefix = key.rstrip(b"/") + b"/"
        rows = self.conn.execute(
            "SELECT path, size, mtime_ns, reason, detail, decoder FROM failures "
            "WHERE path = ? OR (path >= ? AND path < ?)",
            (key, prefix, prefix[:-1] + b"0"),
        )
        return {r[0]: Failure(*r[1:]) for r in rows}

    def forget_failures(self, keys: Sequence[bytes]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM failures WHERE path = ?", [(k,) for k in keys])

    # -- roots -----------------------------------------------------------------------------------
    def put_root(self, root: Path, settings: dict[str, Any], *, replace_nested: bool = False) -> None:
        """Remember a root and its settings. ``replace_nested`` forgets roots inside it: the run over
        ``root`` has just written their files with its own settings, so they are its files now."""
        key = path_key(root)
        prefix = key.rstrip(b"/") + b"/"
        with self.transaction() as c:
            if replace_nested:
                c.execute("DELETE FROM roots WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + b"0"))
            c.execute(
                "INSERT OR REPLACE INTO roots (path, settings, last_run) VALUES (?, ?, ?)",
                (key, json.dumps(settings, sort_keys=True), time.time()),
            )

    def forget_roots(self, roots: Sequence[Path]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM roots WHERE path = ?", [(path_key(r),) for r in roots])

    def roots(self) -> list[tuple[Path, dict[str, Any], float]]:
        rows = self.conn.execute("SELECT path, settings, last_run FROM roots ORDER BY path").fetchall()
        return [(key_path(r[0]), json.loads(r[1]), r[2]) for r in rows]

    # -- paths untag cleared inside a root ------------------------------------------------------
    def untagged_marks(self) -> dict[bytes, bool]:
        """Path key -> untagged: folders and files ``untag`` cleared inside a root (True) and the
        paths inside them tagged again since (False). Empty for a cache of an older schema."""
        if self.schema_version() < 5:
            return {}
        return {r[0]: bool(r[1]) for r in self.conn.execute("SELECT path, untagged FROM untagged")}

    def set_untagged(self, paths: Sequence[Path], untagged: bool) -> dict[bytes, bool]:
        """Record that ``untag`` cleared ``paths`` (``untagged``) or that ``tag`` was asked for them
        (not); returns the marks now in force."""
        old = self.untagged_marks()
        new = old
        for p in paths:
            new = with_mark(new, path_key(p), untagged)
        if new == old:
            return new
        now = time.time()
        with self.transaction() as c:
            c.executemany("DELETE FROM untagged WHERE path = ?", [(k,) for k in old if k not in new])
            c.executemany(
                "INSERT OR REPLACE INTO untagged (path, untagged, at) VALUES (?, ?, ?)",
                [(k, int(v), now) for k, v in new.items() if old.get(k) != v],
            )
        return new

    # -- maintenance -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        q = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
        size = sum(p.stat().st_size for p in (self.path, Path(str(self.path) + "-wal")) if p.exists())
        per_model = self.conn.execute(
            "SELECT m.id, m.key, m.info, COUNT(v.content_id) FROM models m LEFT JOIN vectors v ON v.model_id = m.id "
            "GROUP BY m.id ORDER BY m.id"
        ).fetchall()
        return {
            "path": str(self.path),
            "schema_version": self.schema_version(),
            "files": q("SELECT COUNT(*) FROM files"),
            "contents": q("SELECT COUNT(*) FROM contents"),
            "vectors": q("SELECT COUNT(*) FROM vectors"),
            "text_vectors": q("SELECT COUNT(*) FROM text_vectors"),
            "written": q("SELECT COUNT(*) FROM written"),
            "models": [
                {"id": r[0], "key": r[1], "name": json.loads(r[2]).get("name"), "vectors": r[3]} for r in per_model
            ],
            "roots": [str(p) for p, _, _ in self.roots()],
            "untagged": [os.fsdecode(k) for k, v in sorted(self.untagged_marks().items()) if v],
            "size_bytes": size,
        }

    def prune(
        self, *, missing_files: bool = True, keep_models: Sequence[int] | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Drop rows of files and roots gone from disk, contents no file uses, and models not in
        ``keep_models``."""
        gone: list[bytes] = []
        if missing_files:
            for (key,) in self.conn.execute("SELECT path FROM files"):
                if not os.path.lexists(os.fsdecode(key)):
                    gone.append(key)
        gone_roots = [k for (k,) in self.conn.execute("SELECT path FROM roots") if not os.path.lexists(os.fsdecode(k))]
        gone_failures = [
            k for (k,) in self.conn.execute("SELECT path FROM failures") if not os.path.lexists(os.fsdecode(k))
        ]
        gone_marks = [k for k in self.untagged_marks() if not os.path.lexists(os.fsdecode(k))]
        counts = {
            "files": len(gone),
            "models": 0,
            "vectors": 0,
            "contents": 0,
            "text_vectors": 0,
            "roots": len(gone_roots),
            "untagged": len(gone_marks),
        }
        if dry_run:
            return counts
        with self.transaction() as c:
            c.executemany("DELETE FROM files WHERE path = ?", [(k,) for k in gone])
            c.executemany("DELETE FROM written WHERE path = ?", [(k,) for k in gone])
            c.executemany("DELETE FROM roots WHERE path = ?", [(k,) for k in gone_roots])
            c.executemany("DELETE FROM failures WHERE path = ?", [(k,) for k in gone_failures])
            c.executemany("DELETE FROM untagged WHERE path = ?", [(k,) for k in gone_marks])
            if keep_models is not None:
                ids = [r[0] for r in c.execute("SELECT id FROM models") if r[0] not in set(keep_models)]
                for mid in ids:
                    counts["vectors"] += c.execute("DELETE FROM vectors WHERE model_id = ?", (mid,)).rowcount
                    counts["text_vectors"] += c.execute("DELETE FROM text_vectors WHERE model_id = ?", (mid,)).rowcount
                    c.execute("DELETE FROM models WHERE id = ?", (mid,))
                counts["models"] = len(ids)
            counts["vectors"] += c.execute(
                "DELETE FROM vectors WHERE content_id NOT IN (SELECT content_id FROM files)"
            ).rowcount
            c.execute("DELETE FROM fingerprints WHERE content_id NOT IN (SELECT content_id FROM files)")
            counts["contents"] = c.execute(
                "DELETE FROM contents WHERE id NOT IN (SELECT content_id FROM files)"
            ).rowcount
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    def integrity_ok(self) -> bool:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # -- whole-library reads for search and duplicates (rtagx/analysis) ---------------------------
    def model_id_for_key(self, key: str) -> int | None:
        """The id of a model identity the cache knows, without registering it."""
        row = self.conn.execute("SELECT id FROM models WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def vector_dim(self, model_id: int) -> int | None:
        """The size of a model's cached vectors (from a stored row), or None when it has none."""
        row = self.conn.execute("SELECT length(vector) FROM vectors WHERE model_id = ? LIMIT 1", (model_id,)).fetchone()
        return int(row[0]) // np.dtype(np.float16).itemsize if row else None

    def vector_rowids(self) -> tuple[int, int]:
        """(first, last) rowid of the vectors table (every model): how to split a scan into parts."""
        row = self.conn.execute("SELECT min(rowid), max(rowid) FROM vectors").fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    def iter_vectors(
        self, model_id: int, dim: int, block_rows: int = 4096, rowids: tuple[int, int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every vector of a model as blocks of (content ids int64, float16 rows): memory stays at one
        block however large the library. Read in table order (one sequential pass; NOT INDEXED keeps
        SQLite from visiting the rows through the primary-key index, one b-tree descent per row);
        ``rowids`` (first, end) limits the pass to part of the table, for parallel scans. Blocks of
        4096 rows (4 MiB) stay in the CPU cache while they are joined and converted."""
        from operator import itemgetter

        first, second = itemgetter(0), itemgetter(1)
        sql = "SELECT content_id, vector FROM vectors NOT INDEXED WHERE model_id = ?"
        if rowids is None:
            cur = self.conn.execute(sql, (model_id,))
        else:  # one part of the table (rowid >= first and < end), for parallel scans
            cur = self.conn.execute(sql + " AND rowid >= ? AND rowid < ?", (model_id, *rowids))
        while rows := cur.fetchmany(block_rows):
            ids = np.fromiter(map(first, rows), dtype=np.int64, count=len(rows))
            blob = b"".join(map(second, rows))
            if len(blob) != len(rows) * dim * 2:
                raise CacheError(f"cache {self.path}: vectors of model #{model_id} are not {dim}-dimensional")
            yield ids, np.frombuffer(blob, dtype=np.float16).reshape(len(rows), dim)

    @staticmethod
    def _scope_ranges(scopes: Sequence[Path]) -> list[tuple[bytes, bytes, bytes]]:
        """(exact key, first, end) path-key ranges of the files at or below each scope, in path order;
        a scope inside another is dropped (its files are the outer scope's already)."""
        keys = sorted({path_key(p) for p in scopes})
        kept: list[bytes] = []
        for k in keys:
            if not any(k == o or k.startswith(o.rstrip(b"/") + b"/") for o in kept):
                kept.append(k)
        return [(k, k.rstrip(b"/") + b"/", k.rstrip(b"/") + b"0") for k in kept]

    _FILES_WITH_VECTORS = (
        "FROM files f JOIN vectors v ON v.model_id = ? AND v.content_id = f.content_id "
        "WHERE f.path = ? OR (f.path >= ? AND f.path < ?)"
    )

    def count_files_with_vectors(self, model_id: int, scopes: Sequence[Path] = ()) -> int:
        """How many files (at or below ``scopes``; none: all) have a vector of the model."""
        if not scopes:
            q = "SELECT COUNT(*) FROM files f JOIN vectors v ON v.model_id = ? AND v.content_id = f.content_id"
            return int(self.conn.execute(q, (model_id,)).fetchone()[0])
        q = f"SELECT COUNT(*) {self._FILES_WITH_VECTORS}"
        return sum(int(self.conn.execute(q, (model_id, *r)).fetchone()[0]) for r in self._scope_ranges(scopes))

    def iter_files_with_vectors(
        self, model_id: int, dim: int, scopes: Sequence[Path] = (), block_rows: int = 8192
    ) -> Iterator[tuple[list[bytes], np.ndarray, list[str], np.ndarray]]:
        """Every file (at or below ``scopes``; none: all) with a vector of the model, in path order,
        as blocks of (path keys, content ids int64, fingerprints, float16 rows): a file per row, so a
        content two files hold comes twice. One cursor walks the ``files`` key in order and looks each
        vector up by its key; memory stays at one block however large the library."""
        select = "SELECT f.path, f.content_id, f.fingerprint, v.vector "
        parts: list[tuple[str, tuple[bytes, ...]]] = [
            (f"{select}{self._FILES_WITH_VECTORS} ORDER BY f.path", r) for r in self._scope_ranges(scopes)
        ]
        if not scopes:
            join = "FROM files f JOIN vectors v ON v.model_id = ? AND v.content_id = f.content_id"
            parts = [(f"{select}{join} ORDER BY f.path", ())]
        for sql, args in parts:
            cur = self.conn.execute(sql, (model_id, *args))
            while rows := cur.fetchmany(block_rows):
                paths, ids, fingerprints, blobs = zip(*rows)
                blob = b"".join(blobs)
                if len(blob) != len(rows) * dim * 2:
                    raise CacheError(f"cache {self.path}: vectors of model #{model_id} are not {dim}-dimensional")
                vectors = np.frombuffer(blob, dtype=np.float16).reshape(len(rows), dim)
                yield list(paths), np.array(ids, dtype=np.int64), list(fingerprints), vectors

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every query inside sees the cache as it was when the first one ran
        (a count and the rows it counted agree while a ``tag`` run writes beside them)."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            with suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    def iter_files(self) -> Iterator[FileRecord]:
        """Every file row, in path order."""
        make = FileRecord._make
        for row in self.conn.execute(f"SELECT {self._file_columns} FROM files"):
            yield make(row)

    def files_with_contents(self, content_ids: Iterable[int]) -> list[FileRecord]:
        """The files holding the given contents (one pass over ``files`` per 900 ids: there is no
        index by content, so ask for few ids at a time, as search does for its best results)."""
        ids = list(set(content_ids))
        out: list[FileRecord] = []
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            q = f"SELECT {self._file_columns} FROM files WHERE content_id IN ({','.join('?' * len(chunk))})"
            out.extend(FileRecord._make(r) for r in self.conn.execute(q, chunk))
        return out

    # -- a person's review decisions (rtagx review) -----------------------------------------------
    def has_reviews_table(self) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reviews'"
        return self.conn.execute(q).fetchone() is not None

    def put_reviews(self, rows: Sequence[tuple[int, str, int, int | None, float | None]]) -> None:
        """Record (content_id, tag, decision, model_id, score): decision +1 accepted, -1 rejected,
        0 forgets an earlier decision."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "DELETE FROM reviews WHERE content_id = ? AND tag = ?", [(r[0], r[1]) for r in rows if r[2] == 0]
            )
            c.executemany(
                "INSERT OR REPLACE INTO reviews (content_id, tag, decision, model_id, score, at) VALUES (?,?,?,?,?,?)",
                [(cid, tag, 1 if d > 0 else -1, m, s, now) for cid, tag, d, m, s in rows if d != 0],
            )

    def reviews_for(self, content_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """content id -> {tag: +1 accepted / -1 rejected}, for the contents that have decisions."""
        out: dict[int, dict[str, int]] = {}
        if not self.has_reviews_table():  # a cache of schema < 6 opened read-only
            return out
        ids = list(set(content_ids))
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            q = f"SELECT content_id, tag, decision FROM reviews WHERE content_id IN ({','.join('?' * len(chunk))})"
            for cid, tag, d in self.conn.execute(q, chunk):
                out.setdefault(int(cid), {})[str(tag)] = int(d)
        return out

    def reviewed_contents(self) -> set[int]:
        """Contents with at least one decision (a run re-scores their files instead of settling them)."""
        if not self.has_reviews_table():
            return set()
        return {int(r[0]) for r in self.conn.execute("SELECT DISTINCT content_id FROM reviews")}

    def all_reviews(self) -> list[tuple[int, str, int, int | None, float | None]]:
        """Every decision: (content_id, tag, decision, model_id, score)."""
        if not self.has_reviews_table():
            return []
        q = "SELECT content_id, tag, decision, model_id, score FROM reviews ORDER BY tag, content_id"
        return [(int(a), str(b), int(c), d, e) for a, b, c, d, e in self.conn.execute(q)]


def _migrate(conn: sqlite3.Connection, path: Path, target: int = SCHEMA_VERSION) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > target:
        raise CacheError(
            f"cache {path} was written by a newer rtagx (schema {version} > {target}); upgrade rtagx or use another --cache"
        )
    while version < target:
        script = MIGRATIONS[version]
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {version + 1};\nCOMMIT;")
        except sqlite3.Error as e:
            conn.rollback()
            raise CacheError(f"cannot migrate cache {path} to schema {version + 1}: {e}") from None
        version += 1


def open_store(path: Path, *, readonly: bool = False, schema_version: int = SCHEMA_VERSION) -> Store:
    """Open (creating and migrating as needed) the cache at ``path``.

    ``readonly`` opens an existing cache for inspection without creating or migrating it.
    """
    path = Path(path).expanduser()
    try:
        if readonly:
            if not path.exists():
                raise CacheError(f"no cache at {path} yet (run `rtagx tag` first)")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=60, isolation_level=None)
            if (
                not conn.execute("PRAGMA user_version").fetchone()[0]
                and conn.execute("PRAGMA page_count").fetchone()[0] == 0
            ):
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new, empty database
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # checkpoint at ~4 MiB of WAL whatever the page size (SQLite counts pages: 1000 by default)
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(100, (4 << 20) // page)}")
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA foreign_keys = OFF")
        if not readonly:
            _migrate(conn, path, schema_version)
        # Python's sqlite3 context manager commits/rolls back; with isolation_level None we manage BEGIN.
        conn.isolation_level = "DEFERRED"
        # Store reads the schema version: a file that is no database fails here when opened read-only
        store = Store(path, conn)
    except sqlite3.DatabaseError as e:
        raise CacheError(f"cannot open cache {path}: {e} (move it away or pass another --cache)") from None
    except OSError as e:
        raise CacheError(f"cannot create cache {path}: {e.strerror}") from None
    return store


def check_cache_file(path: Path) -> int:
    """Open an existing cache read-only (no lock, no migration) and return its schema version, so
    ``doctor`` can tell a usable cache from a folder or another file at its path, as a run would.
    Raises :class:`CacheError` naming what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CacheError(f"cache {path} is not a file (move it away or pass another --cache)")
    store = open_store(path, readonly=True)
    try:
        version = store.schema_version()
    finally:
        store.close()
    if version > SCHEMA_VERSION:
        raise CacheError(
            f"cache {path} was written by a newer rtagx (schema {version} > {SCHEMA_VERSION}); upgrade rtagx or use another --cache"
        )
    return version
