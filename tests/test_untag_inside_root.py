"""``untag`` of a folder or file inside a tagged folder (issue 21b), on real files, the real CLI, a
real SQLite cache and the tiny CLIP; exiftool reads the keywords back and plays the person who typed
one. Later runs over the enclosing root (``retag`` with and without paths, ``tag ROOT``) leave the
untagged path alone; ``tag`` of that path (or of something inside it) tags it again."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rtagx.cache.store import SCHEMA_VERSION, is_untagged, open_store, path_key, with_mark
from rtagx.cli.commands import cli

VOCAB = "dog\ncat\nmountain\nbeach\ncar\nfood\n"
EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool reads the keywords back")
SCORING = ("--threshold", "-1", "--top-k", "2")


def _run(args: list[str], expect: int = 0) -> tuple[list[dict], dict, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    objs = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    summary = next((o for o in objs if o.get("summary")), {})
    return [o for o in objs if not o.get("summary")], summary, result.output


def _tag(paths: list[Path], tiny_clip, cache: Path, vocab: Path, *extra: str) -> tuple[list[dict], dict, str]:
    model = ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]
    return _run(["tag", *map(str, paths), *model, "--tags", str(vocab), *SCORING, "--yes", "--json", *extra])


def _retag(paths: list[Path], cache: Path, *extra: str) -> tuple[list[dict], dict, str]:
    return _run(["retag", *map(str, paths), "--cache", str(cache), "--json", *extra])


def _untag(paths: list[Path], cache: Path, *extra: str) -> tuple[list[dict], dict, str]:
    return _run(["untag", *map(str, paths), "--cache", str(cache), "--json", *extra])


def _subjects(path: Path) -> list[str]:
    out = subprocess.run([EXIFTOOL, "-j", "-XMP-dc:Subject", str(path)], capture_output=True, text=True, check=True)
    value = json.loads(out.stdout)[0].get("Subject", [])
    return value if isinstance(value, list) else [value]


def _add_keyword(path: Path, keyword: str) -> None:
    """A person (exiftool, as a photo manager would) types a keyword."""
    edits = [f"-XMP-dc:Subject+={keyword}", f"-IPTC:Keywords+={keyword}"]
    subprocess.run([EXIFTOOL, "-q", "-q", "-overwrite_original", *edits, str(path)], check=True)


def _paths(files: list[dict]) -> set[str]:
    return {f["path"] for f in files}


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Lib with two photos of its own and two in Lib/Sub; a vocabulary file."""
    lib = tmp_path / "Lib"
    sub = lib / "Sub"
    sub.mkdir(parents=True)
    for i, path in enumerate([lib / "a.jpg", lib / "b.jpg", sub / "c.jpg", sub / "d.jpg"]):
        arr = np.random.default_rng(i).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(path, quality=90)
    vocab = tmp_path / "tags.txt"
    vocab.write_text(VOCAB, encoding="utf-8")
    return lib, sub, vocab


def _own(path: Path) -> list[str]:
    """rtagx's keywords in a file (the vocabulary's words among its subjects)."""
    return [k for k in _subjects(path) if k in VOCAB.split()]


def test_an_untagged_folder_inside_a_root_stays_untagged(tiny_clip, library, tmp_path) -> None:
    lib, sub, vocab = library
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, vocab)
    assert all(_own(p) for p in sorted(lib.rglob("*.jpg")))
    _add_keyword(sub / "c.jpg", "Grandma")

    _, summary, out = _untag([sub], cache)
    assert summary["written"] == 2
    assert f"{sub} stays untagged: later runs over {lib} leave it alone; `rtagx tag {sub}` tags it again" in out
    assert _subjects(sub / "c.jpg") == ["Grandma"] and _subjects(sub / "d.jpg") == []
    with open_store(cache, readonly=True) as store:
        assert store.untagged_marks() == {path_key(sub): True}
        assert [p for p, _, _ in store.roots()] == [lib]  # the root stays remembered

    # every later automatic run over Lib leaves Sub alone: neither written nor skipped nor listed
    for files, summary, _ in (
        _retag([], cache),
        _retag([lib], cache),
        _retag([], cache, "--top-k", "3"),  # new options: Lib's own files are rewritten, Sub's are not
        _tag([lib], tiny_clip, cache, vocab),
    ):
        assert not any("/Sub/" in p for p in _paths(files)), files
        assert summary["skipped"] == 0 and summary["left_untagged"] == 2 and summary["seen"] == 2
        assert _subjects(sub / "c.jpg") == ["Grandma"] and _subjects(sub / "d.jpg") == []
    assert len(_own(lib / "a.jpg")) == 2  # the last run over Lib (top-k 2) wrote Lib's own files

    # the text summary says so; an explicit retag of Sub tells how to tag it again
    result = CliRunner().invoke(cli, ["retag", str(sub), "--cache", str(cache), "-v"])
    assert result.exit_code == 0, result.output
    assert "left alone 2 untagged by `rtagx untag`" in result.output
    assert not any(line.startswith("written") for line in result.output.splitlines())
    assert f"{sub} stays untagged (`rtagx untag`): `rtagx tag {sub}` tags it again" in result.output

    # `tag Lib/Sub` tags it again (a dry run first changes nothing), and a later retag keeps it tagged
    files, summary, _ = _tag([sub], tiny_clip, cache, vocab, "--dry-run")
    assert summary["written"] == 2 and _subjects(sub / "d.jpg") == []
    files, summary, _ = _tag([sub], tiny_clip, cache, vocab)
    assert summary["written"] == 2 and summary["left_untagged"] == 0
    assert _own(sub / "d.jpg") and "Grandma" in _subjects(sub / "c.jpg") and _own(sub / "c.jpg")
    with open_store(cache, readonly=True) as store:
        assert store.untagged_marks() == {}
    files, summary, _ = _retag([], cache, "--top-k", "1")
    assert summary["seen"] == 4 and summary["left_untagged"] == 0 and summary["written"] == 4
    assert len(_own(sub / "d.jpg")) == 1 and "Grandma" in _subjects(sub / "c.jpg")


def test_an_untagged_file_inside_a_root_stays_untagged(tiny_clip, library, tmp_path) -> None:
    lib, sub, vocab = library
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, vocab)
    photo = lib / "a.jpg"
    _add_keyword(photo, "Grandma")
    _, summary, out = _untag([photo], cache)
    assert summary["written"] == 1 and f"{photo} stays untagged" in out
    assert _subjects(photo) == ["Grandma"]

    for files, summary, _ in (
        _retag([], cache),
        _retag([lib], cache),
        _retag([photo], cache),
        _tag([lib], tiny_clip, cache, vocab, "--top-k", "3"),
    ):
        assert str(photo) not in _paths(files) and summary["skipped"] == 0 and summary["left_untagged"] == 1
        assert _subjects(photo) == ["Grandma"]
    assert len(_own(lib / "b.jpg")) == 3 and len(_own(sub / "c.jpg")) == 3

    files, summary, _ = _tag([photo], tiny_clip, cache, vocab)
    assert _paths(files) == {str(photo)} and summary["written"] == 1
    assert _own(photo) and "Grandma" in _subjects(photo)
    _, summary, _ = _retag([], cache, "--top-k", "1")
    assert summary["left_untagged"] == 0 and len(_own(photo)) == 1 and "Grandma" in _subjects(photo)


def test_tag_inside_an_untagged_folder_tags_only_what_it_names(tiny_clip, library, tmp_path) -> None:
    lib, sub, vocab = library
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, vocab)
    _untag([sub], cache)
    _tag([sub / "c.jpg"], tiny_clip, cache, vocab)
    assert _own(sub / "c.jpg") and not _own(sub / "d.jpg")
    files, summary, _ = _retag([], cache, "--top-k", "1")
    assert summary["left_untagged"] == 1 and str(sub / "d.jpg") not in _paths(files)
    assert len(_own(sub / "c.jpg")) == 1 and _subjects(sub / "d.jpg") == []

    # watch hands run_tag the photos that land, without clearing anything: one landing in Sub is left alone
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    shutil.copy2(sub / "d.jpg", sub / "e.jpg")
    options = {"model": str(tiny_clip[0]), "pretrained": str(tiny_clip[1]), "cache": str(cache), "tags": str(vocab)}
    summary_ = run_tag([sub / "e.jpg"], load_settings(options))
    assert (summary_.seen, summary_.written, summary_.left_untagged) == (0, 0, 1) and _subjects(sub / "e.jpg") == []
    (sub / "e.jpg").unlink()

    # a dry-run untag records nothing; untag of a whole root forgets the root and records no mark
    _, _, out = _untag([lib / "b.jpg"], cache, "--dry-run")
    assert "stays untagged" not in out
    _untag([lib], cache)
    with open_store(cache, readonly=True) as store:
        assert store.roots() == [] and store.untagged_marks() == {path_key(sub): True, path_key(sub / "c.jpg"): False}


def test_marks_follow_untag_and_tag(tmp_path: Path) -> None:
    lib, sub = b"/p/Lib", b"/p/Lib/Sub"
    marks = with_mark({}, sub, True)
    assert is_untagged(sub + b"/x/y.jpg", marks) and not is_untagged(lib + b"/a.jpg", marks)
    assert with_mark(marks, lib, False) == marks  # `tag Lib` keeps respecting `untag Lib/Sub`
    inner = with_mark(with_mark(marks, sub + b"/x", False), sub + b"/x/y", True)
    assert not is_untagged(sub + b"/x/a.jpg", inner) and is_untagged(sub + b"/x/y/b.jpg", inner)
    assert with_mark(inner, sub, False) == {sub + b"/x/y": True}  # what was untagged inside stays so
    assert with_mark(inner, sub, True) == marks  # untag covers everything inside it
    assert with_mark(marks, sub + b"/c.jpg", True) == marks  # already untagged: nothing new

    with open_store(tmp_path / "c.db") as store:
        assert store.set_untagged([Path("/p/Lib/Sub")], True) == marks == store.untagged_marks()
        assert store.set_untagged([Path("/p/Lib/Sub/c.jpg")], False) == store.untagged_marks()
        assert store.untagged_marks() == {sub: True, sub + b"/c.jpg": False}


def test_prune_forgets_marks_whose_path_is_gone(tiny_clip, library, tmp_path) -> None:
    lib, sub, vocab = library
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, vocab)
    _untag([sub], cache)
    _untag([lib / "a.jpg"], cache)
    _, _, stats = _run(["cache", "stats", "--cache", str(cache), "--json"])
    assert json.loads(stats)["untagged"] == [str(sub), str(lib / "a.jpg")]
    shutil.rmtree(sub)
    _run(["cache", "prune", "--cache", str(cache)])
    with open_store(cache, readonly=True) as store:
        assert store.untagged_marks() == {path_key(lib / "a.jpg"): True}


def test_a_cache_of_schema_4_migrates(tiny_clip, library, tmp_path) -> None:
    lib, sub, vocab = library
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, vocab)
    conn = sqlite3.connect(cache)  # what rtagx of schema 4 left: everything but the untagged table
    conn.execute("DROP TABLE untagged")
    conn.execute("ALTER TABLE vectors DROP COLUMN decoder")  # schema 7's
    conn.execute("ALTER TABLE failures DROP COLUMN decoder")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    _, _, stats = _run(["cache", "stats", "--cache", str(cache), "--json"])  # read as it is, not migrated
    assert json.loads(stats)["schema_version"] == 4 and json.loads(stats)["untagged"] == []

    _untag([sub], cache)
    with open_store(cache, readonly=True) as store:
        assert store.schema_version() == SCHEMA_VERSION == 7
        assert store.untagged_marks() == {path_key(sub): True}
    _, summary, _ = _retag([], cache)
    assert summary["left_untagged"] == 2 and _subjects(sub / "c.jpg") == []
