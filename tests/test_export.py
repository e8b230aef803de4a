"""``rtagx export`` on real camera photos tagged with the tiny CLIP.

What the export holds is checked against the cache read with plain sqlite3 (not through rtagx's
Store) and against ``retag --dry-run --json``; the files are read back with pyarrow and numpy (and
DuckDB when it is installed), as a data pipeline would read them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rtagx.cache.store import open_store
from rtagx.cli.commands import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_clip, samples_dir) -> dict:
    """Every camera-sample JPEG (the corrupt one left out), a few in a subfolder, one byte-identical
    copy (two files, one content), tagged into a cache with a small vocabulary."""
    root = tmp_path_factory.mktemp("export-library")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    jpgs = sorted(p for p in (samples_dir / "jpg").glob("*.jpg") if p.name != "corrupted.jpg")
    for n, p in enumerate(jpgs):
        shutil.copy2(p, photos / ("sub" if n % 3 == 0 else "") / p.name)
    shutil.copy2(jpgs[1], photos / f"copy_of_{jpgs[1].name}")
    vocab = root / "tags.txt"
    vocab.write_text("dog\ncat\ncar\nbeach\nperson\nmountain\n", encoding="utf-8")
    cache = root / "cache.sqlite3"
    cfg, ckpt = tiny_clip
    args = ["tag", str(photos), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache)]
    args += ["--tags", str(vocab), "--threshold", "-1", "--top-k", "3", "--write", "none", "--yes", "-q"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"root": root, "photos": photos, "cache": cache, "vocab": vocab}


def rtagx(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def export(library: dict, to: Path, *args: str) -> dict:
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(to), "--json", *args)
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def cached_vectors(cache: Path) -> dict[str, tuple[int, np.ndarray]]:
    """path -> (content id, float16 vector), read with plain sqlite3."""
    with sqlite3.connect(cache) as conn:
        rows = conn.execute(
            "SELECT f.path, f.content_id, v.vector FROM files f JOIN vectors v ON v.content_id = f.content_id"
        ).fetchall()
    return {os.fsdecode(p): (cid, np.frombuffer(blob, dtype=np.float16)) for p, cid, blob in rows}


def retag_choices(cache: Path, *args: str) -> dict[str, list[tuple[str, float]]]:
    """What ``retag --dry-run`` chooses for each file: path -> [(tag, score)]."""
    code, out = rtagx("retag", *args, "--cache", str(cache), "--dry-run", "--json", "-q")
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {o["path"]: [(t["tag"], t["score"]) for t in o["tags"]] for o in lines if not o.get("summary")}


def read_npy_export(to: Path) -> tuple[pa.Table, np.ndarray, list[tuple[int, int]]]:
    """Metadata rows and vectors of an npy export, with (metadata rows, vector rows) per shard."""
    metas = sorted((to / "metadata").glob("metadata_*.parquet"))
    embs = sorted((to / "img_emb").glob("img_emb_*.npy"))
    assert [p.stem.split("_")[-1] for p in metas] == [p.stem.split("_")[-1] for p in embs]
    tables = [pq.read_table(p) for p in metas]
    arrays = [np.load(p) for p in embs]
    sizes = [(t.num_rows, a.shape[0]) for t, a in zip(tables, arrays)]
    return pa.concat_tables(tables), np.concatenate(arrays), sizes


def test_npy_export_equals_the_cache_and_retag(library, tmp_path) -> None:
    to = tmp_path / "out"
    summary = export(library, to)
    cache = cached_vectors(library["cache"])
    meta, vectors, sizes = read_npy_export(to)
    assert summary["rows"] == len(cache) == meta.num_rows == vectors.shape[0]
    assert sizes == [(len(cache), len(cache))]  # one shard: the default holds 100k rows
    paths = meta.column("image_path").to_pylist()
    assert paths == sorted(cache)  # path order, every cached file once
    assert meta.column("content_id").to_pylist() == [cache[p][0] for p in paths]
    # vectors exactly as the cache keeps them (float16, clip-retrieval's dtype)
    assert vectors.dtype == np.float16
    assert np.array_equal(vectors, np.stack([cache[p][1] for p in paths]))
    # the byte-identical copy shares its original's content and vector
    copies = [p for p in paths if Path(p).name.startswith("copy_of_")]
    assert len(copies) == 1
    original = str(Path(copies[0]).with_name(Path(copies[0]).name.removeprefix("copy_of_")))
    assert cache[copies[0]][0] == cache[original][0]
    # the tags and scores retag --dry-run chooses (it rounds scores to 4 decimals)
    chosen = retag_choices(library["cache"])
    assert sorted(chosen) == paths
    for row in meta.to_pylist():
        assert row["tags"] == [t for t, _ in chosen[row["image_path"]]], row["image_path"]
        assert len(row["tags"]) == 3 and row["tags_source"] == "scored"
        assert np.allclose(row["scores"], [s for _, s in chosen[row["image_path"]]], atol=6e-5)
    manifest = json.loads((to / "_rtagx_export.json").read_text())
    assert manifest["rows"] == len(cache) and manifest["dim"] == vectors.shape[1] == 32
    assert manifest["files"] == ["img_emb/img_emb_0000.npy", "metadata/metadata_0000.parquet"]
    assert meta.schema.metadata[b"rtagx.model_key"].decode() == manifest["model_key"]


def test_parquet_shards_split_and_hold_float32_vectors(library, tmp_path) -> None:
    cache = cached_vectors(library["cache"])
    n = len(cache)
    summary = export(library, tmp_path / "pq", "--format", "parquet", "--shard-size", "4")
    parts = sorted((tmp_path / "pq").glob("part_*.parquet"))
    assert summary["shards"] == len(parts) == -(-n // 4)
    assert [pq.read_metadata(p).num_rows for p in parts] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    table = ds.dataset(tmp_path / "pq", format="parquet").to_table()  # the manifest (_...) is skipped
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    paths = table.column("image_path").to_pylist()
    assert paths == sorted(cache)
    embedding = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert embedding.dtype == np.float32
    assert np.array_equal(embedding, np.stack([cache[p][1] for p in paths]).astype(np.float32))
    # npy shards split alike, each metadata shard aligned with its vectors
    export(library, tmp_path / "npy", "--shard-size", "4")
    meta, vectors, sizes = read_npy_export(tmp_path / "npy")
    assert [a for a, _ in sizes] == [b for _, b in sizes] == [pq.read_metadata(p).num_rows for p in parts]
    assert meta.column("image_path").to_pylist() == paths
    assert np.array_equal(vectors.astype(np.float32), embedding)
    assert meta.column("tags").to_pylist() == table.column("tags").to_pylist()


def test_paths_limit_the_export_to_files_under_them(library, tmp_path) -> None:
    sub = library["photos"] / "sub"
    summary = export(library, tmp_path / "out", str(sub), str(sub / "nested-scope-is-dropped"))
    meta, vectors, _ = read_npy_export(tmp_path / "out")
    expected = sorted(p for p in cached_vectors(library["cache"]) if p.startswith(f"{sub}/"))
    assert expected and meta.column("image_path").to_pylist() == expected
    assert summary["rows"] == vectors.shape[0] == len(expected)
    chosen = retag_choices(library["cache"], str(sub))
    assert meta.column("tags").to_pylist() == [[t for t, _ in chosen[p]] for p in expected]
    code, out = rtagx(
        "export", str(library["root"] / "elsewhere"), "--cache", str(library["cache"]), "--to", str(tmp_path / "none")
    )
    assert code == 2 and "nothing to export" in out and not (tmp_path / "none").exists()


def test_a_non_empty_folder_is_refused_unless_overwrite(library, tmp_path) -> None:
    to = tmp_path / "out"
    export(library, to, "--shard-size", "2")
    before = sorted(p.relative_to(to) for p in to.rglob("*"))
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(to))
    assert code == 2 and "is not empty" in out and "--overwrite" in out
    assert sorted(p.relative_to(to) for p in to.rglob("*")) == before
    (to / "notes.txt").write_text("mine", encoding="utf-8")
    (to / "img_emb" / ".img_emb_0099.npy.tmp-12345").write_bytes(b"half a shard of a killed export")
    summary = export(library, to, "--overwrite")
    assert summary["shards"] == 1  # the earlier export's shards went with it
    assert sorted(p.name for p in (to / "img_emb").iterdir()) == ["img_emb_0000.npy"]
    assert (to / "notes.txt").read_text(encoding="utf-8") == "mine"  # not ours: left alone
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(to / "notes.txt"))
    assert code == 2 and "is a file" in out


def test_duckdb_reads_both_formats(library, tmp_path) -> None:
    duckdb = pytest.importorskip("duckdb")
    export(library, tmp_path / "pq", "--format", "parquet", "--shard-size", "5")
    export(library, tmp_path / "npy", "--shard-size", "5")
    query = f"SELECT count(*), min(len(embedding)) FROM read_parquet('{tmp_path}/pq/*.parquet')"
    ((rows, dim),) = duckdb.sql(query).fetchall()
    assert rows == len(cached_vectors(library["cache"])) and dim == 32
    tags = duckdb.sql(
        f"SELECT image_path, tags FROM read_parquet('{tmp_path}/npy/metadata/*.parquet') ORDER BY image_path"
    ).fetchall()
    assert [list(t) for _, t in tags] == ds.dataset(tmp_path / "pq").to_table().column("tags").to_pylist()


def test_files_no_root_holds_get_the_tags_rtagx_wrote(library, tiny_clip, photo_dir, tmp_path) -> None:
    """A file no root holds, with no vocabulary named: the tags rtagx last wrote; with --tags: scored."""
    cache = tmp_path / "cache.sqlite3"
    cfg, ckpt = tiny_clip
    args = ["tag", str(photo_dir), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache)]
    args += ["--tags", str(library["vocab"]), "--threshold", "-1", "--top-k", "2", "--write", "sidecar", "--yes", "-q"]
    code, text = rtagx(*args)
    assert code == 3, text  # the corrupt sample is skipped
    with open_store(cache) as store:
        written = store.written(os.fsencode(p) for p in cached_vectors(cache))
        store.forget_roots([photo_dir])
    assert len(written) == 4
    code, text = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "written"), "--json")
    assert code == 0, text
    meta, _, _ = read_npy_export(tmp_path / "written")
    assert meta.column("tags_source").to_pylist() == ["written"] * 4
    for row in meta.to_pylist():
        rec = written[os.fsencode(row["image_path"])]
        assert row["tags"] == [t for t, _ in rec.tags] and len(row["tags"]) == 2
        assert np.allclose(row["scores"], [s for _, s in rec.tags], atol=1e-5)
    vocab = str(library["vocab"])
    code, text = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "scored"), "--tags", vocab, "--json")
    assert code == 0, text
    meta, _, _ = read_npy_export(tmp_path / "scored")
    assert meta.column("tags_source").to_pylist() == ["scored"] * 4
    chosen = retag_choices(cache, str(photo_dir), "--tags", vocab)
    assert meta.column("tags").to_pylist() == [[t for t, _ in chosen[p]] for p in meta.column("image_path").to_pylist()]


def test_without_pyarrow_one_clear_line(library, tmp_path) -> None:
    wrapper = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from rtagx.cli.commands import main; sys.argv[0] = 'rtagx'; main()"
    )
    to = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, "export", "--cache", str(library["cache"]), "--to", str(to)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["rtagx: error: rtagx export needs pyarrow: pip install 'rtagx[export]'"]
    assert not to.exists()


def test_an_empty_or_missing_cache_says_so(tmp_path) -> None:
    code, out = rtagx("export", "--cache", str(tmp_path / "none.sqlite3"), "--to", str(tmp_path / "a"))
    assert code == 2 and "no cache at" in out and "rtagx tag" in out
    with open_store(tmp_path / "empty.sqlite3"):
        pass  # a cache with its tables and no vectors
    code, out = rtagx("export", "--cache", str(tmp_path / "empty.sqlite3"), "--to", str(tmp_path / "b"))
    assert code == 1 and "holds no image vectors yet" in out and "rtagx tag" in out
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_persons_review_decisions_shape_the_exported_tags(library, tmp_path) -> None:
    """A tag a person rejected in ``rtagx review`` is not exported; one they accepted is, as retag does."""
    cache = tmp_path / "cache.sqlite3"
    source, copy = sqlite3.connect(library["cache"]), sqlite3.connect(cache)
    source.backup(copy)  # the WAL's pages too
    source.close()
    copy.close()
    before = export(library, tmp_path / "before")
    meta, _, _ = read_npy_export(tmp_path / "before")
    first = meta.slice(0, 1).to_pylist()[0]
    with open_store(cache) as store:
        model_id = store.find_model(before["model_key"])
        store.put_reviews([(first["content_id"], first["tags"][0], -1, model_id, first["scores"][0])])
    code, out = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "after"), "--json")
    assert code == 0, out
    after, _, _ = read_npy_export(tmp_path / "after")
    row = after.slice(0, 1).to_pylist()[0]
    assert row["image_path"] == first["image_path"] and first["tags"][0] not in row["tags"]
    chosen = retag_choices(cache)
    assert after.column("tags").to_pylist() == [
        [t for t, _ in chosen[p]] for p in after.column("image_path").to_pylist()
    ]


def test_a_new_vocabulary_is_encoded_once_and_an_untagged_folder_gets_no_tags(library, tmp_path) -> None:
    """--tags the cache has not seen: its prompts are encoded (text tower) and kept, and the tags equal
    retag's with the same options; files under a folder `untag` cleared are exported without tags."""
    cache = tmp_path / "cache.sqlite3"
    source, copy = sqlite3.connect(library["cache"]), sqlite3.connect(cache)
    source.backup(copy)
    source.close()
    copy.close()
    vocab = tmp_path / "new.txt"
    vocab.write_text("bicycle\nharbour\nforest\n", encoding="utf-8")
    options = ["--tags", str(vocab), "--threshold", "-1", "--top-k", "2"]
    with sqlite3.connect(cache) as conn:
        prompts_before = conn.execute("SELECT COUNT(*) FROM text_vectors").fetchone()[0]
    code, out = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "new"), "--json", *options)
    assert code == 0, out
    with sqlite3.connect(cache) as conn:
        assert conn.execute("SELECT COUNT(*) FROM text_vectors").fetchone()[0] > prompts_before
    meta, _, _ = read_npy_export(tmp_path / "new")
    chosen = retag_choices(cache, *options)
    paths = meta.column("image_path").to_pylist()
    assert meta.column("tags").to_pylist() == [[t for t, _ in chosen[p]] for p in paths]
    assert {t for tags in meta.column("tags").to_pylist() for t in tags} <= {"bicycle", "harbour", "forest"}
    sub = library["photos"] / "sub"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(sub.iterdir())}
    code, out = rtagx("untag", str(sub), "--cache", str(cache), "-q")
    assert code == 0, out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(sub.iterdir())} == before  # nothing was written
    code, out = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "untagged"), "--json")
    assert code == 0, out
    meta, _, _ = read_npy_export(tmp_path / "untagged")
    for row in meta.to_pylist():
        inside = row["image_path"].startswith(f"{sub}/")
        assert row["tags_source"] == ("untagged" if inside else "scored")
        assert bool(row["tags"]) != inside


HELD_EXPORT = """
import os, sys, time
from rtagx.analysis import export
export.BLOCK_ROWS = 3  # small blocks: a shard of 4 rows takes two of them
_add = export.ShardWriter.add
_calls = [0]
def _held(self, *args):
    # a test hook around the real writer: after two blocks (one whole shard and half the next),
    # say so and wait while the hold file exists
    _add(self, *args)
    _calls[0] += 1
    if _calls[0] == 2:
        open(os.environ["RTAGX_TEST_REACHED"], "w").close()
        while os.path.exists(os.environ["RTAGX_TEST_HOLD"]):
            time.sleep(0.02)
export.ShardWriter.add = _held
from rtagx.cli.commands import main
sys.argv = ["rtagx", *sys.argv[1:]]
main()
"""


def test_a_killed_export_leaves_only_whole_shards(library, tmp_path) -> None:
    hold, reached, to = tmp_path / "hold", tmp_path / "reached", tmp_path / "out"
    hold.touch()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RTAGX_NO_PROGRESS": "1"}
    env |= {"RTAGX_TEST_HOLD": str(hold), "RTAGX_TEST_REACHED": str(reached)}
    args = ["export", "--cache", str(library["cache"]), "--to", str(to), "--shard-size", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_EXPORT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300  # a guard against a hung child, not a measurement
        while not reached.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reached.exists(), proc.communicate()
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait()
    finally:
        hold.unlink(missing_ok=True)
    visible = sorted(str(p.relative_to(to)) for p in to.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert visible == ["img_emb/img_emb_0000.npy", "metadata/metadata_0000.parquet"]  # no manifest: not finished
    hidden = sorted(p.name for p in to.rglob(".*"))
    assert hidden and all(".tmp-" in name and "0001" in name for name in hidden)  # the half shard, hidden
    assert np.load(to / "img_emb" / "img_emb_0000.npy").shape == (4, 32)
    assert ds.dataset(to / "metadata", format="parquet").to_table().num_rows == 4  # readers skip the temporary
    summary = export(library, to, "--overwrite", "--shard-size", "4")
    assert summary["rows"] == len(cached_vectors(library["cache"]))
    assert not list(to.rglob(".*"))


def test_a_folder_that_cannot_be_made_is_one_line(library, tmp_path) -> None:
    """--to below a file (or on a read-only or full disk): one line naming the folder, exit 1."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(a_file / "out"))
    assert code == 1, out
    assert out.strip().splitlines() == [f"rtagx: error: cannot write the export into {a_file / 'out'}: Not a directory"]


def test_a_write_that_fails_midway_is_one_line_and_leaves_no_temporary(library, tmp_path, monkeypatch) -> None:
    """A full disk while the second shard is written: one line, exit 1, only whole shards left and
    no manifest (the export did not finish)."""
    import errno

    from rtagx.analysis import export as export_module

    real = export_module._fsync_rename
    calls = [0]

    def full_disk(tmp: Path, final: Path) -> None:
        calls[0] += 1
        if calls[0] > 2:  # the first shard's two files go through; the second shard's do not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        real(tmp, final)

    monkeypatch.setattr(export_module, "_fsync_rename", full_disk)
    to = tmp_path / "out"
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(to), "--shard-size", "4")
    assert code == 1, out
    assert out.strip().splitlines() == [f"rtagx: error: cannot write the export into {to}: No space left on device"]
    left = sorted(str(p.relative_to(to)) for p in to.rglob("*") if p.is_file())
    assert left == ["img_emb/img_emb_0000.npy", "metadata/metadata_0000.parquet"]


def test_a_vocabulary_given_by_a_relative_path_is_found_from_any_folder(tiny_clip, photo_dir, tmp_path, monkeypatch):
    """`tag --tags tags.txt` run in one folder, `export` (or a cron job's retag) in another: the
    root must remember where the vocabulary is, not the words typed."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tags.txt").write_text("dog\ncat\ncar\n", encoding="utf-8")
    cache = tmp_path / "cache.sqlite3"
    monkeypatch.chdir(work)
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]
    code, out = rtagx(
        "tag", str(photo_dir), *model, "--tags", "tags.txt", "--threshold", "-1", "--write", "none", "--yes", "-q"
    )
    assert code == 3, out  # the corrupt sample is skipped
    monkeypatch.chdir(tmp_path)
    code, out = rtagx("export", "--cache", str(cache), "--to", str(tmp_path / "out"), "--json")
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["tags_from"] == {"scored": 4}
    tags = pq.read_table(tmp_path / "out" / "metadata" / "metadata_0000.parquet").column("tags").to_pylist()
    assert all(set(t) == {"dog", "cat", "car"} for t in tags)


def test_quiet_prints_the_summary_line_only(library, tmp_path) -> None:
    """-q: 'only errors ... and the summary', as in every other command; the list of files goes."""
    code, out = rtagx("export", "--cache", str(library["cache"]), "--to", str(tmp_path / "out"), "-q")
    assert code == 0, out
    assert len(out.strip().splitlines()) == 1 and out.startswith("exported "), out
