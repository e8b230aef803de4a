"""The vector cache on real SQLite files: schema, migrations, vectors, locking, prune."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtagx.cache.fingerprint import fingerprint_file
from rtagx.cache.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    open_store,
    pack_vector,
    path_key,
)
from rtagx.errors import CacheError, LockBusyError


def _vec(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_new_cache_is_wal_and_current_schema(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.integrity_ok()


def test_migrates_forward_from_version_1_keeping_data(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    with open_store(db, schema_version=1) as store:
        assert store.schema_version() == 1
        mid = store.model_id("m|t|64", {"name": "m"})
        with store.transaction() as c:  # the rows an rtagx of schema 1 wrote
            cid = c.execute("INSERT INTO contents DEFAULT VALUES").lastrowid
            c.execute("INSERT INTO fingerprints VALUES ('fp-a', ?)", (cid,))
            c.execute("INSERT INTO files VALUES (?, 10, 5, 'fp-a', ?, 0)", (path_key(tmp_path / "a.jpg"), cid))
            c.execute("INSERT INTO vectors VALUES (?, ?, ?)", (mid, cid, pack_vector(_vec(1))))
        assert not store.conn.execute("SELECT name FROM sqlite_master WHERE name = 'written'").fetchone()
    with open_store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.conn.execute("SELECT name FROM sqlite_master WHERE name = 'written'").fetchone()
        got = store.vectors(mid, [cid], 8)
        assert np.allclose(got[0], _vec(1), atol=1e-3)
        rec = store.file(tmp_path / "a.jpg")
        assert rec is not None and (rec.size, rec.mtime_ns, rec.content_id) == (10, 5, cid)
        assert (rec.ctime_ns, rec.inode) == (0, 0)  # unknown until a run sees the file
        assert store.vector_decoders(mid, [cid]) == {cid: 1}  # checked against the decoder by the next run


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.sqlite3"
    with open_store(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(CacheError, match="newer rtagx"):
        open_store(db)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "junk.sqlite3"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="cannot open cache"):
        open_store(db)


def test_migrations_are_contiguous() -> None:
    assert sorted(MIGRATIONS) == list(range(SCHEMA_VERSION))


def test_vectors_are_float16_and_keyed_by_model(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        a = store.model_id("model-a", {"name": "a"})
        b = store.model_id("model-b", {"name": "b"})
        assert a != b and store.model_id("model-a") == a
        (cid,) = store.put_files([(tmp_path / "x.jpg", 1, 1, "fp")])
        store.put_vectors(a, [cid], _vec(7)[None, :])
        blob = store.conn.execute("SELECT vector FROM vectors").fetchone()[0]
        assert len(blob) == 8 * 2  # float16
        assert store.contents_with_vectors(a, [cid]) == {cid}
        assert store.contents_with_vectors(b, [cid]) == set()
        with pytest.raises(CacheError):
            store.vectors(b, [cid], 8)


def test_many_vectors_come_by_one_range_scan_in_the_order_asked(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        a, b = store.model_id("model-a"), store.model_id("model-b")
        ids = store.put_files([(tmp_path / f"{i}.jpg", 1, 1, f"fp-{i}") for i in range(3000)])
        vecs = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
        store.put_vectors(a, ids[:2500], vecs[:2500])
        store.put_vectors(b, ids, vecs[::-1].copy())  # another model's vectors in the same range
        asked = list(reversed(ids[:2500])) + ids[:10]  # out of order, with repeats
        got = store.vectors(a, asked, 8)
        want = np.concatenate([vecs[:2500][::-1], vecs[:10]])
        assert np.allclose(got, want, atol=1e-2)
        assert store.contents_with_vectors(a, ids) == set(ids[:2500])
        with pytest.raises(CacheError):
            store.vectors(a, ids, 8)  # the last 500 have none


def test_fingerprint_aliases_share_one_content(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        (cid,) = store.put_files([(tmp_path / "a.jpg", 10, 1, "fp-1")])
        # after rtagx rewrote a's header: new fingerprint, same content
        store.put_files([(tmp_path / "a.jpg", 12, 2, "fp-2")], [cid])
        assert store.content_for_fingerprint("fp-1") == cid
        assert store.content_for_fingerprint("fp-2") == cid
        # a copy elsewhere with the same bytes maps to the same content
        (cid2,) = store.put_files([(tmp_path / "b.jpg", 12, 3, "fp-2")])
        assert cid2 == cid


def test_text_vectors_roundtrip(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        mid = store.model_id("m")
        vecs = np.stack([_vec(1), _vec(2)])
        store.put_text_vectors(mid, ["a photo of a dog.", "日本"], vecs)
        got = store.text_vectors(mid, ["日本", "missing", "a photo of a dog."])
        assert set(got) == {"日本", "a photo of a dog."}
        assert np.allclose(got["日本"], vecs[1], atol=1e-3)


def test_files_under_matches_folder_not_siblings(tmp_path: Path) -> None:
    with open_store(tmp_path / "c.sqlite3") as store:
        rows = [
            (tmp_path / "lib" / "a.jpg", 1, 1, "1"),
            (tmp_path / "lib" / "sub" / "b.jpg", 1, 1, "2"),
            (tmp_path / "lib2" / "c.jpg", 1, 1, "3"),
            (tmp_path / "lib-x.jpg", 1, 1, "4"),
        ]
        store.put_files(rows)
        under = store.files_under(tmp_path / "lib")
        assert set(under) == {path_key(rows[0][0]), path_key(rows[1][0])}


def test_non_utf8_file_names_roundtrip(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # not valid UTF-8
    with open_store(tmp_path / "c.sqlite3") as store:
        store.put_files([(tmp_path / name, 1, 1, "fp")])
        assert store.file(tmp_path / name) is not None


def test_fingerprint_of_a_file_of_no_known_format_covers_every_byte(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    a.write_bytes(os.urandom(300_000))
    fp1 = fingerprint_file(a)
    assert fp1.startswith("file:")
    data = bytearray(a.read_bytes())
    data[150_000] ^= 0xFF  # the middle: outside the first and last 64 KiB that schema 3 sampled
    a.write_bytes(bytes(data))
    assert fingerprint_file(a) != fp1
    small = tmp_path / "s.bin"
    small.write_bytes(b"x")
    assert fingerprint_file(small) != fingerprint_file(a)


def test_prune_forgets_deleted_files_and_unused_models(tmp_path: Path) -> None:
    keep = tmp_path / "keep.jpg"
    gone = tmp_path / "gone.jpg"
    keep.write_bytes(b"k")
    with open_store(tmp_path / "c.sqlite3") as store:
        a = store.model_id("a", {"name": "a"})
        b = store.model_id("b", {"name": "b"})
        ids = store.put_files([(keep, 1, 1, "k"), (gone, 1, 1, "g")])
        store.put_vectors(a, ids, np.stack([_vec(1), _vec(2)]))
        store.put_vectors(b, ids[:1], _vec(3)[None, :])
        counts = store.prune(keep_models=[a])
        assert counts["files"] == 1 and counts["models"] == 1
        assert store.stats()["files"] == 1
        assert store.stats()["vectors"] == 1
        assert store.integrity_ok()


def test_writer_lock_no_wait_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite3"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from rtagx.cache.store import open_store
            s = open_store({str(db)!r}); s.lock.acquire()
            print('locked', flush=True); time.sleep(30)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with open_store(db) as store:
            with pytest.raises(LockBusyError) as info:
                store.lock.acquire(wait=False)
            assert info.value.exit_code == 4
    finally:
        holder.kill()
        holder.wait()
    with open_store(db) as store:  # a killed holder leaves no stale lock
        store.lock.acquire(wait=False)


@settings(max_examples=200, deadline=None)
@given(
    magic=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"RIFF\x10\x00\x00\x00WEBP"]),
    body=st.binary(max_size=400),
)
def test_fingerprint_of_damaged_containers_never_fails(tmp_path_factory, magic: bytes, body: bytes) -> None:
    """Any bytes behind an image magic: a fingerprint (the whole file's, when the structure does not
    parse), never an exception."""
    path = tmp_path_factory.mktemp("fp") / "x.img"
    path.write_bytes(magic + body)
    fp = fingerprint_file(path)
    assert fp.split(":")[0] in ("jpeg", "png", "tiff", "webp", "file") and len(fp.split(":")[1]) == 32
