"""The vector cache across runs, on real SQLite files and the real CLI with the tiny CLIP.

Renames, moves, edits and deletions; two models in one cache; runs killed (SIGKILL) or interrupted
(SIGINT) mid-way and resumed; two runs at once; the schema migration from the previous version;
prompt vectors cached between runs. The runs that must be stopped part-way go through a real
``rtagx`` subprocess whose encoder waits before a given batch while a "hold" file exists: the test
polls the cache read-only until the batches before it are stored, then kills, interrupts or races
the run at a known point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rtagx.cache.store import SCHEMA_VERSION, WriterLock, open_store
from rtagx.cli.commands import cli

VOCAB = "dog\ncat\nmountain\nbeach\ncar\nfood\n"


# -- helpers --------------------------------------------------------------------------------------


def _make_jpegs(folder: Path, n: int, seed: int = 0, size: int = 48) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.jpg"
        Image.fromarray(arr).save(path, "JPEG", quality=85)
        out.append(path)
    return out


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "tags.txt"
    path.write_text(VOCAB, encoding="utf-8")
    return path


def _json_lines(output: str) -> tuple[list[dict], dict]:
    objs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    summary = [o for o in objs if o.get("summary")]
    assert len(summary) == 1, output
    return [o for o in objs if not o.get("summary")], summary[0]


def _tag(
    paths: list[Path], model: tuple[Path, Path], cache: Path, *extra: str, expect: int = 0
) -> tuple[list[dict], dict]:
    cfg, ckpt = model
    args = [
        "tag",
        *map(str, paths),
        "--model",
        str(cfg),
        "--pretrained",
        str(ckpt),
        "--cache",
        str(cache),
        "--yes",
        "--json",
        *extra,
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return _json_lines(result.output)


def _count(cache: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # no such table yet: the run has not created the schema
        return 0
    finally:
        conn.close()


def _scores(files: list[dict]) -> dict[str, dict[str, float]]:
    return {Path(f["path"]).name: {t["tag"]: t["score"] for t in f["tags"]} for f in files}


def _close(a: dict[str, float], b: dict[str, float], tol: float = 2e-3) -> bool:
    """Same tags, scores equal up to float16 storage (a fresh run scores the float32 vector)."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


SLOW_RTAGX = """
import os, sys, time
from rtagx.model import encoder
_orig = encoder.Encoder.encode_images
_done = [0]
def _held(self, batch):
    # a test hook around the real model: after FREE batches, wait while the HOLD file exists
    _done[0] += 1
    hold = os.environ.get("RTAGX_TEST_HOLD")
    if hold and _done[0] > int(os.environ.get("RTAGX_TEST_FREE", "2")):
        while os.path.exists(hold):
            time.sleep(0.02)
    return _orig(self, batch)
encoder.Encoder.encode_images = _held
from rtagx.cli.commands import main
sys.argv = ["rtagx", *sys.argv[1:]]
main()
"""


def _held_rtagx(tmp_path: Path, args: list[str], hold: Path | None, free_batches: int = 2, **kw) -> subprocess.Popen:
    """The real CLI in a subprocess; its encoder stops before batch ``free_batches + 1`` while ``hold`` exists."""
    script = tmp_path / "held_rtagx.py"
    script.write_text(textwrap.dedent(SLOW_RTAGX))
    env = {
        **os.environ,
        "RTAGX_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "RTAGX_NO_PROGRESS": "1",
        "RTAGX_TEST_HOLD": str(hold or ""),
        "RTAGX_TEST_FREE": str(free_batches),
    }
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, str(script), *args], text=True, env=env, **kw)


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert text in path.read_text(), path.read_text()


def _wait_for_vectors(cache: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"rtagx ended (rc {proc.returncode}) before it could be stopped:\n{out}\n{err}")
        if cache.exists():
            n = _count(cache, "vectors")
            if n >= at_least:
                return n
        time.sleep(0.02)
    proc.kill()
    pytest.fail("rtagx stored no vectors in time")


def _tag_args(lib: Path, model: tuple[Path, Path], cache: Path, vocab: Path, *extra: str) -> list[str]:
    return [
        "tag",
        str(lib),
        "--model",
        str(model[0]),
        "--pretrained",
        str(model[1]),
        "--cache",
        str(cache),
        "--tags",
        str(vocab),
        "--yes",
        "--json",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--threads",
        "1",
        *extra,
    ]


# -- renames, moves, edits, deletions ---------------------------------------------------------------


def test_rename_and_move_reuse_the_vector(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _make_jpegs(lib, 6)
    cache = tmp_path / "c.sqlite3"
    common = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    first_files, first = _tag([lib], tiny_clip, cache, *common)
    assert first["embedded"] == 6 and first["written"] == 6
    before = _scores(first_files)

    (lib / "img000.jpg").rename(lib / "renamed.jpg")
    (lib / "deeper" / "still").mkdir(parents=True)
    (lib / "img001.jpg").rename(lib / "deeper" / "still" / "moved.jpg")
    files, summary = _tag([lib], tiny_clip, cache, *common)
    assert summary["embedded"] == 0 and summary["reused"] == 2 and summary["seen"] == 6
    after = _scores(files)
    assert _close(after["renamed.jpg"], before["img000.jpg"])
    assert _close(after["moved.jpg"], before["img001.jpg"])
    assert _count(cache, "vectors") == 6 and _count(cache, "contents") == 6


def test_file_edited_in_place_is_embedded_again(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    lib = tmp_path / "lib"
    paths = _make_jpegs(lib, 4)
    cache = tmp_path / "c.sqlite3"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file))
    with Image.open(paths[2]) as im:
        ImageOps.mirror(im).save(paths[2], "JPEG", quality=85)  # new pixels, same name
    files, summary = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file))
    assert summary["embedded"] == 1 and summary["seen"] == 4 and summary["reused"] == 0
    assert [Path(f["path"]).name for f in files if f.get("embedded")] == ["img002.jpg"]


def test_deleted_file_is_pruned_and_a_shared_vector_stays(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    paths = _make_jpegs(lib, 4)
    shutil.copy2(paths[1], lib / "copy-of-1.jpg")  # same bytes: one content, one vector
    cache = tmp_path / "c.sqlite3"
    _, summary = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    assert summary["seen"] == 5 and summary["embedded"] + summary["reused"] == 5
    assert _count(cache, "vectors") == 4
    paths[0].unlink()
    paths[1].unlink()  # its copy still uses the vector

    runner = CliRunner()
    dry = runner.invoke(cli, ["cache", "prune", "--cache", str(cache), "--dry-run"])
    assert dry.exit_code == 0 and "would remove: 2 missing files" in dry.output
    assert _count(cache, "files") == 5
    result = runner.invoke(cli, ["cache", "prune", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert "removed: 2 missing files, 1 vectors" in result.output
    assert _count(cache, "files") == 3 and _count(cache, "vectors") == 3
    with open_store(cache, readonly=True) as store:
        assert store.integrity_ok()
    # what is left is still usable: nothing is embedded again
    _, again = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    assert again["seen"] == 3 and again["embedded"] == 0


# -- two models in one cache ------------------------------------------------------------------------


def test_second_model_vectors_do_not_leak_into_the_first(
    tiny_clip, tiny_clip_other, vocab_file: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    _make_jpegs(lib, 5)
    cache = tmp_path / "c.sqlite3"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "0", "--write", "none")
    files_a, a = _tag([lib], tiny_clip, cache, *opts)
    files_b, b = _tag([lib], tiny_clip_other, cache, *opts)
    assert a["embedded"] == 5
    assert b["embedded"] == 5 and b["reused"] == 0  # same files, other model: nothing borrowed
    scores_a, scores_b = _scores(files_a), _scores(files_b)
    assert scores_a.keys() == scores_b.keys()
    assert all(scores_a[k] != scores_b[k] for k in scores_a)

    files_a2, a2 = _tag([lib], tiny_clip, cache, *opts)
    assert a2["embedded"] == 0
    again = _scores(files_a2)  # the other model's vectors and prompts did not touch these
    assert again.keys() == scores_a.keys() and all(_close(again[k], scores_a[k]) for k in again)
    with open_store(cache, readonly=True) as store:
        stats = store.stats()
    assert [m["vectors"] for m in stats["models"]] == [5, 5] and stats["contents"] == 5
    conn = sqlite3.connect(cache)
    per_model = conn.execute("SELECT COUNT(*) FROM text_vectors GROUP BY model_id").fetchall()
    conn.close()
    assert len(per_model) == 2 and per_model[0] == per_model[1]  # each model keeps its own prompt vectors


# -- stopped runs -------------------------------------------------------------------------------------


def test_killed_run_resumes_embedding_only_what_is_missing(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _make_jpegs(lib, 40)
    cache = tmp_path / "c.sqlite3"
    hold = tmp_path / "hold"
    hold.touch()
    proc = _held_rtagx(tmp_path, _tag_args(lib, tiny_clip, cache, vocab_file, "--write", "none"), hold)
    try:
        assert _wait_for_vectors(cache, proc, at_least=4) == 4  # two batches stored, the third one held
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    finally:
        hold.unlink()
    assert proc.returncode == -signal.SIGKILL
    assert _count(cache, "vectors") == 4
    with open_store(cache, readonly=True) as store:
        assert store.integrity_ok()

    _, summary = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    assert summary["embedded"] == 36 and summary["seen"] == 40 and summary["skipped"] == 0
    conn = sqlite3.connect(cache)
    try:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT content_id) FROM files").fetchone() == (40, 40)
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT content_id) FROM vectors").fetchone() == (40, 40)
        assert conn.execute("SELECT COUNT(*) FROM contents").fetchone()[0] == 40
        orphans = conn.execute("SELECT COUNT(*) FROM files WHERE content_id NOT IN (SELECT content_id FROM vectors)")
        assert orphans.fetchone()[0] == 0
    finally:
        conn.close()
    _, third = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    assert third["embedded"] == 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_cleanly_with_a_summary_and_keeps_finished_batches(
    tiny_clip, vocab_file: Path, tmp_path: Path, signum: int, code: int
) -> None:
    """Ctrl-C, or SIGTERM (``timeout`` around a cron job, a service manager), stops the same way."""
    lib = tmp_path / "lib"
    _make_jpegs(lib, 40)
    cache = tmp_path / "c.sqlite3"
    hold = tmp_path / "hold"
    hold.touch()
    opts = ("--threshold", "-1", "--top-k", "2")  # every file gets keywords written
    proc = _held_rtagx(tmp_path, _tag_args(lib, tiny_clip, cache, vocab_file, *opts), hold)
    try:
        assert _wait_for_vectors(cache, proc, at_least=4) == 4
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        hold.unlink()
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err
    files, summary = _json_lines(out)
    assert summary["interrupted"] is True and summary["embedded"] == 4
    assert sorted(Path(f["path"]).name for f in files if f["action"] == "written") == [
        f"img{i:03d}.jpg" for i in range(4)
    ]
    assert _count(cache, "vectors") == 4 and _count(cache, "written") == 4

    _, resumed = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), *opts)
    assert resumed["embedded"] == 36 and resumed["written"] == 36 and resumed["unchanged"] == 4
    assert _count(cache, "vectors") == 40 and _count(cache, "files") == 40


# -- two runs at once -----------------------------------------------------------------------------


def test_concurrent_runs_serialize(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _make_jpegs(lib, 8)
    cache = tmp_path / "c.sqlite3"
    hold = tmp_path / "hold"
    hold.touch()
    args = _tag_args(lib, tiny_clip, cache, vocab_file, "--write", "none")
    first = _held_rtagx(tmp_path, args, hold, free_batches=1)
    err2 = tmp_path / "second.err"
    try:
        assert _wait_for_vectors(cache, first, at_least=2) == 2  # the first holds the lock, mid-run
        with open(err2, "w") as err_out:
            second = _held_rtagx(tmp_path, args, None, stderr=err_out)
        _wait_for_text(err2, "waiting for it", second)
        time.sleep(0.3)
        assert second.poll() is None and _count(cache, "vectors") == 2
    finally:
        hold.unlink()
    out1, err1 = first.communicate(timeout=120)
    out2, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2.read_text())
    s1, s2 = _json_lines(out1)[1], _json_lines(out2)[1]
    assert s1["embedded"] == 8 and s2["embedded"] == 0 and s2["seen"] == 8  # the second found all cached
    assert _count(cache, "vectors") == 8 and _count(cache, "files") == 8


def test_no_wait_exits_4_while_another_holds_the_lock(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _make_jpegs(lib, 2)
    cache = tmp_path / "c.sqlite3"
    with open_store(cache):
        pass
    lock = WriterLock(cache)
    lock.acquire(wait=False)
    try:
        cfg, ckpt = tiny_clip
        result = CliRunner().invoke(
            cli,
            [
                "tag",
                str(lib),
                "--model",
                str(cfg),
                "--pretrained",
                str(ckpt),
                "--cache",
                str(cache),
                "--tags",
                str(vocab_file),
                "--yes",
                "--no-wait",
            ],
        )
        assert result.exit_code == 4, result.output
        assert "another rtagx is using the cache" in result.output and "--no-wait" in result.output
        assert "Traceback" not in result.output
        assert _count(cache, "vectors") == 0
    finally:
        lock.release()
    _, summary = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--no-wait")
    assert summary["embedded"] == 2


# -- schema and prompt vectors ------------------------------------------------------------------------

_V2_VECTOR_TABLES = """
BEGIN;
CREATE TABLE v2_vectors (model_id INTEGER NOT NULL, content_id INTEGER NOT NULL, vector BLOB NOT NULL,
                         PRIMARY KEY (model_id, content_id)) WITHOUT ROWID;
INSERT INTO v2_vectors SELECT model_id, content_id, vector FROM vectors;
DROP TABLE vectors;
ALTER TABLE v2_vectors RENAME TO vectors;
CREATE TABLE v2_text_vectors (model_id INTEGER NOT NULL, prompt TEXT NOT NULL, vector BLOB NOT NULL,
                              PRIMARY KEY (model_id, prompt)) WITHOUT ROWID;
INSERT INTO v2_text_vectors SELECT model_id, prompt, vector FROM text_vectors;
DROP TABLE text_vectors;
ALTER TABLE v2_text_vectors RENAME TO text_vectors;
PRAGMA user_version = 2;
COMMIT;
"""


# Version 5 -> 3: no untagged table; files without ctime/inode, no failures table, fingerprints of
# the old sampled kind (a bare 32-digit hash of the size and the first and last 64 KiB).
_V3_FILES = """
BEGIN;
DROP TABLE untagged;
ALTER TABLE files DROP COLUMN ctime_ns;
ALTER TABLE files DROP COLUMN inode;
DROP TABLE failures;
UPDATE files SET fingerprint = substr(fingerprint, instr(fingerprint, ':') + 1);
UPDATE fingerprints SET fingerprint = substr(fingerprint, instr(fingerprint, ':') + 1);
PRAGMA user_version = 3;
COMMIT;
"""


def test_cache_of_the_previous_schema_migrates_keeping_vectors(tiny_clip, vocab_file: Path, tmp_path: Path) -> None:
    """test_store.py covers version 1 -> current through the API; this is versions 2 -> ... -> 7 under a
    real run: no file is embedded again (their vectors, decoder revision 1, are checked from the JPEG
    headers), no model is loaded, and the rows learn ctime and inode."""
    # 5: untag marks inside a root; 6: the review decisions table (rtagx review); 7: decoder revisions
    assert SCHEMA_VERSION == 7
    lib = tmp_path / "lib"
    _make_jpegs(lib, 4)
    cache = tmp_path / "c.sqlite3"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "0", "--write", "none")
    files, _ = _tag([lib], tiny_clip, cache, *opts)
    conn = sqlite3.connect(cache)
    conn.executescript(_V3_FILES)  # back to the version-3 layout, as rtagx 3 left it
    conn.executescript(_V2_VECTOR_TABLES)  # and on to the version-2 layout, as rtagx 2 left it
    conn.close()
    with open_store(cache, readonly=True) as store:
        assert store.schema_version() == 2
    # read-only commands read the old cache as it is, without migrating it
    shown = CliRunner().invoke(cli, ["show", str(lib / "img000.jpg"), "--cache", str(cache), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["cached"] is True, shown.output
    stats = CliRunner().invoke(cli, ["cache", "stats", "--cache", str(cache), "--json"])
    assert stats.exit_code == 0 and json.loads(stats.output)["schema_version"] == 2, stats.output

    again, summary = _tag([lib], tiny_clip, cache, *opts)
    assert summary["embedded"] == 0 and "load-model" not in summary["timings"]
    before, after = _scores(files), _scores(again)
    assert before.keys() == after.keys() and all(_close(after[k], before[k]) for k in after)
    with open_store(cache, readonly=True) as store:
        assert store.schema_version() == SCHEMA_VERSION and store.integrity_ok()
        sql = store.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'vectors'").fetchone()[0]
        assert "WITHOUT ROWID" not in sql
        rec = store.file(lib / "img000.jpg")
        st = (lib / "img000.jpg").stat()
        assert rec is not None and (rec.ctime_ns, rec.inode) == (st.st_ctime_ns, st.st_ino)
    _, third = _tag([lib], tiny_clip, cache, *opts)
    assert third["embedded"] == 0 and third["reused"] == 0 and "load-model" not in third["timings"]


def test_vectors_take_about_their_own_size_on_disk(tmp_path: Path) -> None:
    """512-dim float16 vectors (ViT-B/16) must not spill into overflow pages: ~1 KiB each, not ~4.7."""
    cache = tmp_path / "c.sqlite3"
    n, dim = 3000, 512
    rng = np.random.default_rng(0)
    with open_store(cache) as store:
        mid = store.model_id("bench-512", {"name": "bench"}, dim=dim)
        rows = [(tmp_path / f"f{i}.jpg", 100, i, f"{i:032x}") for i in range(n)]
        ids = store.put_files(rows)
        store.put_vectors(mid, ids, rng.normal(size=(n, dim)).astype(np.float32))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        used = store.conn.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = 'vectors'").fetchone()[0]
    assert used < n * dim * 2 * 1.15


def test_second_run_encodes_no_prompt(tiny_clip, vocab_file: Path, tmp_path: Path, monkeypatch) -> None:
    from rtagx.model import encoder

    calls: list[int] = []
    original = encoder.Encoder.encode_texts

    def counting(self, texts, *args, **kwargs):
        calls.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(encoder.Encoder, "encode_texts", counting)
    lib = tmp_path / "lib"
    _make_jpegs(lib, 3)
    cache = tmp_path / "c.sqlite3"
    _, first = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file))
    assert sum(calls) > 0 and first["embedded"] == 3
    prompts = _count(cache, "text_vectors")
    assert prompts == sum(calls)

    calls.clear()
    _make_jpegs(tmp_path / "lib" / "more", 2, seed=7)  # new images: the model loads, prompts still come from the cache
    _, second = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file))
    assert second["embedded"] == 2 and calls == []
    calls.clear()
    _, third = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file))
    assert third["embedded"] == 0 and calls == [] and "load-model" not in third["timings"]
    assert _count(cache, "text_vectors") == prompts
