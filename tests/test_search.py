"""``rtagx search`` and ``rtagx duplicates`` on real camera photos with the tiny CLIP.

The rankings are checked against a brute-force computation that reads the cache with plain
sqlite3 and numpy (not through rtagx's Store), the duplicate groups against planted copies (the
original re-encoded at lower quality and half size, a 5% crop, a byte-identical copy), and the
HTML pages by rendering them in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from rtagx.analysis.duplicates import complete_linkage, similar_pairs
from rtagx.analysis.search import QueryTerm, parse_query
from rtagx.cli.commands import cli

ORIGINALS = ("Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg")


def plant_copy(source: Path, target: Path, quality: int = 60) -> None:
    """The original re-encoded at lower quality and scaled to half size."""
    with Image.open(source) as im:
        im = im.convert("RGB")
        im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save(target, quality=quality)


def plant_crop(source: Path, target: Path) -> None:
    """A light crop: 5% off every side."""
    with Image.open(source) as im:
        w, h = im.size
        im.convert("RGB").crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(target, quality=90)


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_clip, samples_dir) -> dict:
    """Every camera-sample JPEG (not the corrupt one) plus planted duplicates, tagged into a cache."""
    root = tmp_path_factory.mktemp("library")
    photos = root / "photos"
    (photos / "planted").mkdir(parents=True)
    for p in sorted((samples_dir / "jpg").glob("*.jpg")):
        if p.name != "corrupted.jpg":
            shutil.copy2(p, photos / p.name)
    for name in ORIGINALS:
        plant_copy(photos / name, photos / "planted" / f"half_{name}")
        plant_crop(photos / name, photos / "planted" / f"crop_{name}")
    shutil.copy2(photos / "Ricoh_Caplio_RR330.jpg", photos / "planted" / "copy_of_Ricoh.jpg")
    vocab = root / "tags.txt"
    vocab.write_text("dog\ncat\ncar\nbeach\n", encoding="utf-8")
    cache = root / "cache.sqlite3"
    cfg, ckpt = tiny_clip
    model = ["--model", str(cfg), "--pretrained", str(ckpt)]
    args = ["tag", str(photos), *model, "--cache", str(cache), "--tags", str(vocab), "--write", "none", "--yes", "-q"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"root": root, "photos": photos, "cache": cache, "model": (cfg, ckpt)}


def rtagx(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def json_lines(output: str) -> tuple[list[dict], dict]:
    objs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [o for o in objs if not o.get("summary")], next(o for o in objs if o.get("summary"))


def cached_image_vectors(cache: Path) -> dict[str, np.ndarray]:
    """path -> cached vector (float32), read with sqlite3 directly: the independent side."""
    with sqlite3.connect(cache) as conn:
        rows = conn.execute(
            "SELECT f.path, v.vector FROM files f JOIN vectors v ON v.content_id = f.content_id"
        ).fetchall()
    return {os.fsdecode(p): np.frombuffer(v, dtype=np.float16).astype(np.float32) for p, v in rows}


def cached_text_vector(cache: Path, text: str) -> np.ndarray:
    with sqlite3.connect(cache) as conn:
        (blob,) = conn.execute("SELECT vector FROM text_vectors WHERE prompt = ?", (text,)).fetchone()
    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def brute_force(cache: Path, query: np.ndarray, under: Path | None = None) -> list[tuple[str, float]]:
    query = query / np.linalg.norm(query)
    scores = [
        (p, float(v @ query))
        for p, v in cached_image_vectors(cache).items()
        if under is None or p.startswith(f"{under}/")
    ]
    return sorted(scores, key=lambda t: (-t[1], t[0]))


def assert_same_ranking(hits: list[dict], expected: list[tuple[str, float]]) -> None:
    """Same files in the same order with the same scores (files of one content tie: path order)."""
    assert [h["path"] for h in hits] == [p for p, _ in expected]
    assert [h["score"] for h in hits] == pytest.approx([s for _, s in expected], abs=1e-4)


# -- search ---------------------------------------------------------------------------------------


def test_text_search_equals_brute_force_over_the_cache(library):
    cache = library["cache"]
    code, out = rtagx("search", "a red car", "--top", "100", "--json", "--cache", str(cache))
    assert code == 0, out
    first, summary = json_lines(out)
    assert "load-numpy-text" in summary["timings"] and "load-model" not in summary["timings"]  # no torch
    files = cached_image_vectors(cache)
    assert summary["compared"] == len(files) - 1  # the byte-identical copy shares its original's vector
    # the second search reads the query vector the first one cached: no model is loaded
    code, out = rtagx("search", "a red car", "--top", "100", "--json", "--cache", str(cache))
    hits, summary = json_lines(out)
    assert "load-model" not in summary["timings"]
    expected = brute_force(cache, cached_text_vector(cache, "a red car"))
    assert len(hits) == len(expected) == len(files)  # every file is listed, copies too
    assert_same_ranking(hits, expected)
    assert [h["path"] for h in first] == [h["path"] for h in hits] or all(
        abs(a["score"] - b["score"]) < 2e-3 for a, b in zip(first, hits)
    )


def test_parallel_ranking_equals_brute_force(library, monkeypatch):
    """Large caches are ranked by one process per core over rowid ranges: same result."""
    from rtagx.analysis import search as search_module

    monkeypatch.setattr(search_module, "PARALLEL_ROWS", 0)
    monkeypatch.setattr(search_module.os, "cpu_count", lambda: 3)  # three parts of ~11 rows
    cache = library["cache"]
    code, out = rtagx("search", "a red car", "--top", "100", "--json", "--cache", str(cache))
    assert code == 0, out
    assert_same_ranking(json_lines(out)[0], brute_force(cache, cached_text_vector(cache, "a red car")))


def test_combined_query_equals_weighted_sum_of_unit_vectors(library):
    cache = library["cache"]
    code, out = rtagx("search", "beach + 2:sunset - people", "--top", "10", "--json", "--cache", str(cache))
    assert code == 0, out
    code, out = rtagx("search", "beach", "+", "2:sunset", "-", "people", "--top", "10", "--json", "--cache", str(cache))
    hits, _ = json_lines(out)
    unit = {t: (v := cached_text_vector(cache, t)) / np.linalg.norm(v) for t in ("beach", "sunset", "people")}
    expected = brute_force(cache, unit["beach"] + 2 * unit["sunset"] - unit["people"])[:10]
    assert_same_ranking(hits, expected)


def test_image_query_from_the_cache_and_embedded_on_the_fly(library, tmp_path):
    cache, photos = library["cache"], library["photos"]
    code, out = rtagx("search", "--like", str(photos / "Nikon_D70.jpg"), "--top", "3", "--cache", str(cache))
    assert code == 0, out
    found = out.splitlines()
    assert found[0] == str(photos / "Nikon_D70.jpg")
    assert set(found[1:]) == {str(photos / "planted" / f"{k}_Nikon_D70.jpg") for k in ("half", "crop")}
    # an image the cache has never seen, given as a query word: embedded with the tag pipeline's stages
    outside = tmp_path / "new_copy_of_pentax.jpg"
    plant_copy(photos / "Pentax_K10D.jpg", outside, quality=40)  # other bytes than the planted copy
    code, out = rtagx("search", str(outside), "--top", "1", "--json", "--cache", str(cache))
    assert code == 0, out
    hits, summary = json_lines(out)
    assert "load-model" in summary["timings"]
    assert hits[0]["path"] in {str(photos / "Pentax_K10D.jpg"), str(photos / "planted" / "half_Pentax_K10D.jpg")}
    assert hits[0]["score"] > 0.99


def test_folders_limit_the_scope_and_plain_output_pipes(library):
    cache, photos = library["cache"], library["photos"]
    planted = photos / "planted"
    code, out = rtagx("search", "a dog", str(planted), "--top", "50", "--cache", str(cache))
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 7 and all(line.startswith(f"{planted}/") and os.path.isfile(line) for line in lines)
    code, out = rtagx("search", "a dog", str(planted), "--top", "50", "--json", "--cache", str(cache))
    assert_same_ranking(json_lines(out)[0], brute_force(cache, cached_text_vector(cache, "a dog"), planted))
    code, out = rtagx("search", "-v", "a dog", "--top", "2", "--min-score", "-1", "--cache", str(cache))
    score, path = out.splitlines()[0].split("  ", 1)
    assert -1 <= float(score) <= 1 and os.path.isfile(path)
    code, out = rtagx("search", "a dog", "--top", "3", "--csv", "--cache", str(cache))
    assert out.splitlines()[0] == "rank,score,path" and len(out.splitlines()) == 4


def test_min_score_cuts_and_errors_are_one_line(library, tmp_path):
    cache = library["cache"]
    _, out = rtagx("search", "a dog", "--top", "100", "--json", "--cache", str(cache))
    hits, _ = json_lines(out)
    k = next(k for k in range(4, len(hits)) if hits[k]["score"] > hits[k + 1]["score"])  # not between copies
    cut = (hits[k]["score"] + hits[k + 1]["score"]) / 2
    _, out = rtagx("search", "a dog", "--top", "100", "--min-score", str(cut), "--json", "--cache", str(cache))
    assert [h["path"] for h in json_lines(out)[0]] == [h["path"] for h in hits[: k + 1]]
    code, out = rtagx("search", "a dog", "--cache", str(tmp_path / "none.sqlite3"))
    assert code == 1 and "no cache" in out
    code, out = rtagx("search", "--cache", str(cache))
    assert code == 2 and "no query" in out
    code, out = rtagx("search", "beach", "-", "beach", "--cache", str(cache))
    assert code == 2 and "cancel out" in out
    code, out = rtagx("search", "beach", str(tmp_path), "--cache", str(cache))
    assert code == 2 and "no cached images under" in out
    code, out = rtagx("duplicates", str(tmp_path), "--cache", str(cache))
    assert code == 2 and "no cached images under" in out


def test_numpy_text_tower_equals_open_clip(tiny_clip):
    from rtagx.model.encoder import load_encoder, resolve_model
    from rtagx.model.numpy_text import load_text_tower

    resolved = resolve_model(str(tiny_clip[0]), str(tiny_clip[1]), offline=True)
    tower = load_text_tower(resolved.identity.as_dict())
    assert tower is not None
    texts = ["a dog", "Beach + sunset, at 5pm!", "Crème brûlée, 東京 &amp; ümlauts", 'it\'s "quoted"', "word " * 90]
    reference = load_encoder(resolved, device="cpu", precision="fp32", text_only=True)
    assert (tower.encode_texts(texts) * reference.encode_texts(texts)).sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    tokens = reference.tokenizer(texts).numpy()
    assert (tower.tokenizer(texts, 77) == tokens).all()


@settings(max_examples=150, deadline=None)
@example("&amp;amp;lt; entities")
@example("tab\there  and\nnewline")
@example("Crème brûlée 東京 🙂")
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_tokenizer_equals_open_clip_on_any_text(text):
    import open_clip

    from rtagx.model.numpy_text import open_clip_dir, tokenizer_at

    ours = tokenizer_at(open_clip_dir() / "bpe_simple_vocab_16e6.txt.gz")
    assert (ours([text], 77) == open_clip.tokenize([text]).numpy()).all()


def test_file_names_that_are_not_utf8(tiny_clip, samples_dir, tmp_path):
    """Any name the OS allows: listed, in JSON (U+FFFD for the bad bytes) and on the page."""
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = os.path.join(os.fsencode(folder), b"caf\xe9 photo.jpg")
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", odd)
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", folder / "copy.jpg")
    cache = tmp_path / "cache.sqlite3"
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]
    code, out = rtagx("tag", str(folder), *model, "--tags", "coco", "--write", "none", "--yes", "-q")
    assert code == 0, out
    code, out = rtagx(
        "search",
        "--like",
        str(folder / "copy.jpg"),
        "--json",
        "--cache",
        str(cache),
        "--html",
        str(tmp_path / "p.html"),
    )
    assert code == 0, out
    paths = [h["path"] for h in json_lines(out)[0]]
    assert str(folder / "caf\ufffd photo.jpg") in paths
    assert "caf\ufffd photo.jpg" in (tmp_path / "p.html").read_text(encoding="utf-8")
    code, out = rtagx("duplicates", str(folder), "--json", "--cache", str(cache))
    assert code == 0 and json_lines(out)[1]["groups"] == 1
    code, out = rtagx("duplicates", str(folder), "--cache", str(cache))
    assert code == 0 and "caf\ufffd photo.jpg" in out
    code, out = rtagx("search", "--like", str(folder / "copy.jpg"), "--cache", str(cache))
    assert code == 0 and "caf\ufffd photo.jpg" in out
    result = CliRunner().invoke(cli, ["search", "--like", str(folder / "copy.jpg"), "-0", "--cache", str(cache)])
    assert result.exit_code == 0 and sorted(result.stdout_bytes.split(b"\0")) == sorted(
        [b"", odd, os.path.join(os.fsencode(folder), b"copy.jpg")]
    )


def test_a_query_image_that_cannot_be_read_is_a_one_line_usage_error(library, tmp_path):
    """A file named like an image that is not one (as a query word or --like): the reason in one
    line and exit 2, not an internal error."""
    cache = library["cache"]
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture\n")
    empty = tmp_path / "empty.png"
    empty.touch()
    for query, reason in (
        (["--like", str(notes)], "not-an-image"),
        ([str(notes)], "not-an-image"),
        ([str(empty)], "empty"),
    ):
        code, out = rtagx("search", *query, "--cache", str(cache))
        assert code == 2, out
        assert len(out.strip().splitlines()) == 1, out
        assert out.startswith(f"rtagx: error: query image {empty if reason == 'empty' else notes}: {reason}"), out


def test_a_new_query_text_scores_as_it_will_from_the_cache(library):
    """The first search with a text encodes it, later ones read its float16 copy from the cache:
    both must give the same scores (and so the same order of near ties)."""
    cache = library["cache"]
    text = "a lighthouse at dusk, first asked here"
    _, first = rtagx("search", text, "--top", "100", "--json", "--cache", str(cache))
    _, again = rtagx("search", text, "--top", "100", "--json", "--cache", str(cache))
    assert "encode-query" in json_lines(first)[1]["timings"] and "encode-query" not in json_lines(again)[1]["timings"]
    assert json_lines(first)[0] == json_lines(again)[0]
    assert_same_ranking(json_lines(first)[0], brute_force(cache, cached_text_vector(cache, text)))


def test_verbose_summary_counts_files_and_cached_images_apart(library):
    """Two files of one content are two results of one cached image: the summary must not say
    '21 of 20 cached images'."""
    cache = library["cache"]
    code, out = rtagx("search", "a dog", "--top", "100", "-v", "--json", "--cache", str(cache))
    hits, summary = json_lines(out)
    assert code == 0 and len(hits) == summary["results"] > summary["compared"]  # the byte-identical copy
    code, out = rtagx("search", "a dog", "--top", "100", "-v", "--cache", str(cache))
    assert code == 0, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"{len(hits)} files listed, {summary['compared']} cached images ranked, model "), last


def test_csv_paths_are_exact_even_with_a_newline(tiny_clip, samples_dir, tmp_path):
    """--csv is for scripts: a name with a newline is quoted by CSV, not rewritten to a backslash-n
    that names no file (search and duplicates)."""
    import csv
    import io

    folder = tmp_path / "lib"
    folder.mkdir()
    odd = folder / "two\nlines.jpg"
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", odd)
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", folder / "plain.jpg")
    cache = tmp_path / "cache.sqlite3"
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]
    code, out = rtagx("tag", str(folder), *model, "--tags", "coco", "--write", "none", "--yes", "-q")
    assert code == 0, out
    code, out = rtagx("search", "--like", str(folder / "plain.jpg"), "--csv", "--cache", str(cache))
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["path"] for r in rows) == sorted([str(odd), str(folder / "plain.jpg")])
    code, out = rtagx("duplicates", str(folder), "--csv", "--cache", str(cache))
    assert code == 0, out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted(r["path"] for r in rows) == sorted([str(odd), str(folder / "plain.jpg")])


def test_a_path_that_is_not_there_is_not_searched_as_text(library, tmp_path):
    """A mistyped or deleted folder or image path must not become a text query over the whole cache
    (exit 0, results from everywhere): one line naming it, exit 2. Words with a slash inside that
    do not start like a path (AC/DC) stay text."""
    cache = library["cache"]
    for word in (str(tmp_path / "no-such-folder"), str(tmp_path / "gone.jpg"), "./nowhere/IMG_1.jpg", "~/no/such/dir"):
        code, out = rtagx("search", "a dog", word, "--cache", str(cache))
        assert code == 2, (word, out)
        assert out.strip().splitlines() == [f"rtagx: error: path not found: {word}"], out
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    code, out = rtagx("search", str(notes), "--cache", str(cache))
    assert code == 2 and "not an image" in out and len(out.strip().splitlines()) == 1, out
    assert parse_query(["AC/DC", "concert"]) == [QueryTerm("text", "AC/DC concert")]


def test_a_page_that_cannot_be_written_stops_before_any_result_is_printed(library, tmp_path):
    """--html below a file: one error line and exit 1, and no results on stdout that a script would
    take for a finished run (search and duplicates)."""
    cache = library["cache"]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for command in (["search", "a dog"], ["duplicates"]):
        result = CliRunner().invoke(cli, [*command, "--html", str(a_file / "p.html"), "--cache", str(cache)])
        assert result.exit_code == 1, result.output
        assert result.stdout == "", result.stdout
        assert len(result.stderr.strip().splitlines()) == 1 and "cannot write" in result.stderr


def test_a_search_never_migrates_a_cache_another_rtagx_holds(library, tmp_path):
    """A new query text is cached only when the writer lock is free, and the lock is taken before
    the cache is opened for writing, which may migrate it (as every writer does): an older cache
    that another rtagx holds stays as it is."""
    import fcntl

    old = tmp_path / "old.sqlite3"
    shutil.copy2(library["cache"], old)
    with sqlite3.connect(old) as conn:  # schema 7 back to 6: the decoder columns go
        conn.execute("ALTER TABLE vectors DROP COLUMN decoder")
        conn.execute("ALTER TABLE failures DROP COLUMN decoder")
        conn.execute("PRAGMA user_version = 6")
    fd = os.open(f"{old}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another rtagx process holds it
        code, out = rtagx("search", "an old cache, a new text", "--top", "2", "--cache", str(old))
        assert code == 0, out
        with sqlite3.connect(old) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
    finally:
        os.close(fd)
    code, out = rtagx("search", "an old cache, a new text", "--top", "2", "--cache", str(old))
    assert code == 0, out
    with sqlite3.connect(old) as conn:  # free now: the text is cached (the cache migrated first)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
        assert conn.execute("SELECT COUNT(*) FROM text_vectors WHERE prompt = 'an old cache, a new text'").fetchone()[0]


def test_files_deleted_since_caching_are_left_out(library, tmp_path):
    """A photo gone since `tag` is never listed by search nor grouped by duplicates; its copy is."""
    cache, photos = library["cache"], library["photos"]
    gone = photos / "Ricoh_Caplio_RR330.jpg"
    held = tmp_path / gone.name
    shutil.move(gone, held)
    try:
        code, out = rtagx("search", "--like", str(held), "--top", "100", "--json", "--cache", str(cache))
        assert code == 0, out
        paths = [h["path"] for h in json_lines(out)[0]]
        assert str(gone) not in paths and paths[0] == str(photos / "planted" / "copy_of_Ricoh.jpg")
        code, out = rtagx("duplicates", "--json", "--cache", str(cache))
        assert code == 0, out
        assert not any("Ricoh" in f["path"] for g in json_lines(out)[0] for f in g["files"])
    finally:
        shutil.move(held, gone)


def test_parse_query():
    assert parse_query(["dog", "on", "a", "beach"]) == [QueryTerm("text", "dog on a beach")]
    expected = [QueryTerm("text", "beach"), QueryTerm("text", "sunset"), QueryTerm("text", "people", -1.0)]
    assert parse_query(["beach", "+", "sunset", "-", "people"]) == expected
    assert parse_query(["beach + sunset - people"]) == expected
    assert parse_query(["red car", "-", "0.5:blue sky"]) == [
        QueryTerm("text", "red car"),
        QueryTerm("text", "blue sky", -0.5),
    ]
    assert parse_query(["well-lit room"]) == [QueryTerm("text", "well-lit room")]
    with pytest.raises(Exception, match="positive"):
        parse_query(["-", "people"])


# -- duplicates -----------------------------------------------------------------------------------


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        h.update(f"{p}:{st.st_mtime_ns}:{st.st_size}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_planted_duplicates_are_grouped_at_the_default_threshold(library):
    cache, photos = library["cache"], library["photos"]
    before = tree_digest(photos)
    code, out = rtagx("duplicates", "--json", "--cache", str(cache))
    assert code == 0, out
    groups, summary = json_lines(out)
    assert summary["min_score_source"].startswith("auto")
    found = {frozenset(Path(f["path"]).name for f in g["files"]) for g in groups}
    planted = {frozenset({n, f"half_{n}", f"crop_{n}"}) for n in ORIGINALS}
    planted.add(frozenset({"Ricoh_Caplio_RR330.jpg", "copy_of_Ricoh.jpg"}))
    assert found == planted  # every planted group, and no distinct photos grouped
    for g in groups:
        keeper = g["files"][0]
        assert keeper["keeper"] and Path(g["keeper"]).name == Path(keeper["path"]).name
        if "Ricoh" in g["keeper"]:
            assert g["files"][1]["same_content"] and g["files"][1]["score"] == 1.0
        else:  # the original has the most pixels
            assert Path(g["keeper"]).name in ORIGINALS and g["why"].startswith("most pixels")
            assert all(f["score"] >= summary["min_score"] for f in g["files"][1:])
    assert tree_digest(photos) == before  # nothing deleted, moved or touched
    code, out = rtagx("duplicates", str(photos / "planted"), "--json", "--cache", str(cache))
    groups, _ = json_lines(out)  # the copies of one original pair with each other, nothing outside scope
    assert {frozenset(Path(f["path"]).name for f in g["files"]) for g in groups} == {
        frozenset({f"half_{n}", f"crop_{n}"}) for n in ORIGINALS
    }


def test_duplicate_groups_are_maximal_complete_linkage_by_brute_force(library):
    """At several thresholds, against every cached vector read through the Store: every two files of
    a group reach the threshold (or share one content), files of one content share a group, no two
    groups (nor a group and an ungrouped photo) could be merged, and a second run prints the same."""
    from rtagx.cache.store import key_path, open_store

    cache = library["cache"]
    with open_store(cache, readonly=True) as store:
        (model,) = store.models()
        dim = store.vector_dim(model["id"])
        vectors = {
            int(c): v.astype(np.float32)
            for ids, rows in store.iter_vectors(model["id"], dim)
            for c, v in zip(ids, rows)
        }
        content = {str(key_path(r.path)): r.content_id for r in store.iter_files()}
    for threshold in ("0.999", "0.995", "0.99", "0.98", "0.95"):
        code, out = rtagx("duplicates", "--min-score", threshold, "--json", "--cache", str(cache))
        assert code == 0, out
        _, again = rtagx("duplicates", "--min-score", threshold, "--json", "--cache", str(cache))
        assert again == out  # the same groups, keepers and order every run
        groups = [[f["path"] for f in g["files"]] for g in json_lines(out)[0]]

        def close(a: str, b: str, t: float = float(threshold)) -> bool:
            return content[a] == content[b] or float(vectors[content[a]] @ vectors[content[b]]) >= t

        grouped = {p for g in groups for p in g}
        for g in groups:
            assert all(close(a, b) for a in g for b in g)
        by_content: dict[int, set[str]] = {}
        for p, c in content.items():
            by_content.setdefault(c, set()).add(p)
        for same in by_content.values():
            assert len(same) == 1 or any(same <= set(g) for g in groups)
        units = groups + [[p] for p in content if p not in grouped]
        for k, g in enumerate(units):
            for h in units[k + 1 :]:
                assert not all(close(a, b) for a in g for b in h), (threshold, g, h)


def test_duplicate_sizes_are_as_the_photo_is_shown(tiny_clip, samples_dir, tmp_path):
    """A photo turned by its EXIF orientation is reported at the size it is shown (68x100), like
    a copy whose pixels were turned, not at its stored size (100x68); a TIFF, which Pillow's loader
    turns itself, is not turned twice."""
    folder = tmp_path / "turned"
    folder.mkdir()
    with Image.open(samples_dir / "jpg" / "Canon_40D.jpg") as im:
        im = im.convert("RGB")
        im.transpose(Image.Transpose.ROTATE_270).save(folder / "pixels_turned.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned 90 degrees clockwise
        im.save(folder / "tag_turned.jpg", quality=95, exif=exif)
        im.save(folder / "tag_turned.tif", exif=exif)  # Pillow's TIFF loader turns it itself
    cache = tmp_path / "cache.sqlite3"
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]
    code, out = rtagx("tag", str(folder), *model, "--tags", "coco", "--write", "none", "--yes", "-q")
    assert code == 0, out
    code, out = rtagx("duplicates", str(folder), "--min-score", "0.9", "--json", "--cache", str(cache))
    assert code == 0, out
    (group,) = json_lines(out)[0]
    assert {Path(f["path"]).name: (f["width"], f["height"]) for f in group["files"]} == {
        "pixels_turned.png": (68, 100),
        "tag_turned.jpg": (68, 100),
        "tag_turned.tif": (68, 100),
    }


def test_duplicates_text_output_and_explicit_threshold(library):
    cache = library["cache"]
    code, out = rtagx("duplicates", "--min-score", "0.99995", "--cache", str(cache))
    assert code == 0, out
    assert out.splitlines()[-1].startswith("1 groups, 1 files that could go")  # only the identical copy
    assert "same" in out


def test_similar_pairs_equal_brute_force_across_tiles():
    rng = np.random.default_rng(7)
    base = rng.standard_normal((300, 64)).astype(np.float32)
    near = base[:40] + 0.15 * rng.standard_normal((40, 64)).astype(np.float32)
    x = np.concatenate([base, near])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    full = x.astype(np.float32) @ x.astype(np.float32).T
    threshold = 0.9
    truth = {(a, b) for a, b in zip(*np.nonzero(np.triu(full, 1) >= threshold))}
    assert len(truth) >= 30
    for rows, cols in ((17, 50), (64, 64), (1000, 1000)):
        i, j, s = similar_pairs(x, threshold, rows=rows, cols=cols)
        assert set(zip(i.tolist(), j.tolist())) == truth
        assert np.allclose(s, full[i, j], atol=1e-5)


def test_complete_linkage_does_not_chain():
    # 0~1 and 1~2 are close, 0~2 is not: 2 must not join 0's group
    i, j, s = np.array([0, 1, 3]), np.array([1, 2, 4]), np.array([0.99, 0.98, 0.97])
    assert sorted(complete_linkage(i, j, s)) == [[0, 1], [3, 4]]


# -- pages ----------------------------------------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (no browser download: the system one)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    executable = chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()


def render(browser, page_file: Path) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri())
    page.wait_for_load_state("load")
    return page, requests


def images_shown(page) -> list[list]:
    """[complete, natural width, rendered width] of every <img>: decoded and laid out, not just present."""
    return page.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])"
    )


def test_search_page_renders_in_chromium(library, browser, tmp_path):
    cache = library["cache"]
    target = tmp_path / "search.html"
    code, out = rtagx("search", "a dog", "--top", "8", "--json", "--html", str(target), "--cache", str(cache))
    assert code == 0, out
    hits, _ = json_lines(out)
    page, requests = render(browser, target)
    assert requests == [target.as_uri()]  # self-contained: the page is the only thing fetched
    assert page.title() == "Search: a dog"
    shown = images_shown(page)
    assert len(shown) == 8 and all(ok and natural > 0 and width > 100 for ok, natural, width in shown)
    cards = page.locator(".card.hit")
    assert cards.count() == 8
    assert cards.locator(".name").all_inner_texts() == [Path(h["path"]).name for h in hits]
    assert [float(v) for v in cards.locator(".value").all_inner_texts()] == pytest.approx(
        [h["score"] for h in hits], abs=1e-4
    )
    assert cards.nth(0).locator(".badge").inner_text() == "#1"
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)


def test_duplicates_page_marks_the_keepers_in_chromium(library, browser, tmp_path):
    cache = library["cache"]
    target = tmp_path / "duplicates.html"
    code, out = rtagx("duplicates", "--json", "--html", str(target), "--cache", str(cache))
    assert code == 0, out
    groups, _ = json_lines(out)
    page, requests = render(browser, target)
    assert requests == [target.as_uri()]
    shown = images_shown(page)
    assert len(shown) == sum(len(g["files"]) for g in groups)
    assert all(ok and natural > 0 for ok, natural, _ in shown)
    sections = page.locator("section.group")
    assert sections.count() == len(groups)
    for k, g in enumerate(groups):
        cards = sections.nth(k).locator(".card")
        assert cards.count() == len(g["files"])
        first = cards.nth(0)
        assert "keeper" in (first.get_attribute("class") or "") and first.locator(".badge").inner_text() == "KEEP"
        assert first.locator(".name").inner_text() == Path(g["keeper"]).name
        # the keeper is marked by a visible green frame, the others are not
        assert first.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(63, 185, 80)"
        assert cards.nth(1).evaluate("e => getComputedStyle(e).borderTopColor") != "rgb(63, 185, 80)"
        # side by side: the cards of a group share one row
        boxes = [cards.nth(n).bounding_box() for n in range(cards.count())]
        assert len({round(b["y"]) for b in boxes}) == 1
    page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)


def test_the_newest_model_taken_without_a_scope_says_which_models_it_left_out(tmp_path, tiny_clip, tiny_clip_other):
    """Two folders tagged with two models: with no folder and no model named, search, duplicates and
    export take the newest model's vectors and say (stderr, not with -q) that the other's are left out."""
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\n", encoding="utf-8")
    cache = tmp_path / "cache.sqlite3"
    for name, (cfg, ckpt) in (("old", tiny_clip_other), ("new", tiny_clip)):
        folder = tmp_path / name
        folder.mkdir()
        Image.fromarray(np.random.default_rng(len(name)).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / "a.jpg"
        )
        args = ["tag", str(folder), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache)]
        result = CliRunner().invoke(cli, [*args, "--tags", str(vocab), "--write", "none", "-q"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    export = ["export", "--to", str(tmp_path / "out"), "--overwrite"]
    for command in (["search", "dog"], ["duplicates"], export):
        result = CliRunner().invoke(cli, [*command, "--cache", str(cache)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "the newest model; the cache also holds vectors of" in result.stderr, command
        quiet = CliRunner().invoke(cli, [*command, "--cache", str(cache), "-q"], catch_exceptions=False)
        assert quiet.exit_code == 0 and "newest model" not in quiet.stderr, command
    scoped = CliRunner().invoke(cli, ["search", "dog", str(tmp_path / "old"), "--cache", str(cache)])
    assert scoped.exit_code == 0 and "newest model" not in scoped.stderr
