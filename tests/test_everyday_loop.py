"""The everyday loop (issue 21 and its neighbours), on real files, the real CLI and the tiny CLIP:

the right vector for every file (content fingerprints of the image data; ctime and inode; RAW
pairing per path), every run remembered (roots recorded at the start, nested roots once, untag
forgets), other programs' keyword edits kept without re-embedding, failures remembered, and
``untag``/``show`` working from what the cache recorded. exiftool is the other program.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rtagx.cache.fingerprint import fingerprint_file
from rtagx.cache.store import WriterLock, open_store
from rtagx.cli.commands import cli

VOCAB = "dog\ncat\nmountain\nbeach\ncar\nfood\n"
OTHER_VOCAB = "pasta\nsoup\ncake\n"
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is the other program")


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "tags.txt"
    path.write_text(VOCAB, encoding="utf-8")
    return path


def _noise(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def _run(args: list[str], expect: int | None = 0) -> tuple[list[dict], dict, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    objs = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    summary = next((o for o in objs if o.get("summary")), {})
    return [o for o in objs if not o.get("summary")], summary, result.output


def _model(tiny_clip, cache: Path) -> list[str]:
    return ["--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1]), "--cache", str(cache)]


def _tag(paths, tiny_clip, cache: Path, *extra: str, expect: int | None = 0) -> tuple[list[dict], dict]:
    files, summary, _ = _run(["tag", *map(str, paths), *_model(tiny_clip, cache), "--yes", "--json", *extra], expect)
    return files, summary


def _retag(paths, cache: Path, *extra: str, expect: int | None = 0) -> tuple[list[dict], dict, str]:
    return _run(["retag", *map(str, paths), "--cache", str(cache), "--json", *extra], expect)


def _by_name(files: list[dict]) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in files}


def _subjects(path: Path) -> list[str]:
    out = subprocess.run([EXIFTOOL, "-j", "-XMP-dc:Subject", str(path)], capture_output=True, text=True, check=True)
    value = json.loads(out.stdout)[0].get("Subject", [])
    return value if isinstance(value, list) else [value]


def _add_keyword(path: Path, keyword: str) -> None:
    """Another program (exiftool, as a photo manager would) adds a keyword in place."""
    subprocess.run(
        [
            EXIFTOOL,
            "-q",
            "-q",
            "-overwrite_original",
            f"-XMP-dc:Subject+={keyword}",
            f"-IPTC:Keywords+={keyword}",
            str(path),
        ],
        check=True,
    )


# -- item 2: different images never share a vector ------------------------------------------------


def _scan(path: Path, band: int) -> None:
    """An uncompressed 800x1000 'scan' with a white border; ``band`` decides the middle only."""
    arr = np.full((1000, 800, 3), 255, dtype=np.uint8)
    arr[300:700, 100:700] = np.random.default_rng(band).integers(0, 256, size=(400, 600, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="TIFF")


def test_scans_sharing_their_first_and_last_64k_get_their_own_vectors(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "scans"
    lib.mkdir()
    for i in range(3):
        _scan(lib / f"scan{i}.tif", i)
    blobs = [(lib / f"scan{i}.tif").read_bytes() for i in range(3)]
    assert len({len(b) for b in blobs}) == 1  # same size, same first and last 64 KiB
    assert len({b[:65536] for b in blobs}) == 1 and len({b[-65536:] for b in blobs}) == 1
    assert len({fingerprint_file(lib / f"scan{i}.tif") for i in range(3)}) == 3

    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "6", "--write", "none")
    _tag([lib / "scan0.tif", lib / "scan1.tif"], tiny_clip, cache, *opts)
    files, summary = _tag([lib], tiny_clip, cache, *opts)
    assert summary["embedded"] == 1 and summary["reused"] == 0
    third = _by_name(files)["scan2.tif"]
    assert third["embedded"] is True
    assert third["tags"] != _by_name(files)["scan1.tif"]["tags"]
    with open_store(cache, readonly=True) as store:
        assert store.stats()["contents"] == 3 and store.stats()["vectors"] == 3


# -- item 3: another program's keyword edit keeps the vector ----------------------------------------


def _one_of_each(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (ext, options) in enumerate(
        [(".jpg", {"quality": 90}), (".png", {}), (".tif", {}), (".webp", {"lossless": True})]
    ):
        path = folder / f"pic{i}{ext}"
        _noise(i).save(path, **options)
        paths.append(path)
    return paths


@needs_exiftool
def test_keyword_edit_by_another_program_reembeds_nothing_and_is_kept(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    paths = _one_of_each(lib)
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    first, summary = _tag([lib], tiny_clip, cache, *opts)
    assert summary["embedded"] == 4
    for path in paths:
        _add_keyword(path, "Holiday 2024")

    _, again = _tag([lib], tiny_clip, cache, *opts)
    assert again["embedded"] == 0 and again["skipped"] == 0 and "load-model" not in again["timings"]
    for path in paths:
        kept = _subjects(path)
        assert "Holiday 2024" in kept
        assert {t["tag"] for t in _by_name(first)[path.name]["tags"]} <= set(kept)

    for path in paths:  # and retag, after another edit: re-scored, not "changed"
        _add_keyword(path, "Family")
    _, retagged, _ = _retag([lib], cache, "--top-k", "1")
    assert retagged["skipped"] == 0 and retagged["seen"] == 4
    _, third = _tag([lib], tiny_clip, cache, *opts)
    assert third["embedded"] == 0


@needs_exiftool
def test_camera_photos_edited_by_another_program_are_not_embedded_again(tiny_clip, vocab_file, samples_dir, tmp_path):
    lib = tmp_path / "camera"
    lib.mkdir()
    for sub in ("jpg", "tiff"):
        for src in sorted((samples_dir / sub).glob("*.*")):
            if src.name != "corrupted.jpg" and src.suffix.lower() in (".jpg", ".tiff"):
                shutil.copy2(src, lib / src.name)
                os.chmod(lib / src.name, 0o644)
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    _, first = _tag([lib], tiny_clip, cache, *opts, expect=None)
    photos = sorted(lib.iterdir())
    assert first["embedded"] >= 20
    for path in photos:
        if path.suffix.lower() in (".jpg", ".tiff"):
            _add_keyword(path, "edited elsewhere")
    _, again = _tag([lib], tiny_clip, cache, *opts, expect=None)
    assert again["embedded"] == 0 and "load-model" not in again["timings"]
    assert again["seen"] == first["seen"] and again["skipped"] == first["skipped"]


def test_rtagx_own_writes_keep_the_fingerprint(tiny_clip, vocab_file, tmp_path) -> None:
    """rtagx records the fingerprint it had before its write for the file after it: true only if
    its writes never touch what the fingerprint covers, in every container it writes into."""
    lib = tmp_path / "lib"
    paths = _one_of_each(lib)
    before = {p: fingerprint_file(p) for p in paths}
    _tag([lib], tiny_clip, tmp_path / "c.db", "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    for path in paths:
        assert fingerprint_file(path) == before[path], path.name


def test_fingerprint_ignores_metadata_and_sees_pixels_and_orientation(tmp_path) -> None:
    lib = tmp_path / "lib"
    paths = _one_of_each(lib)
    for path in paths:
        fp = fingerprint_file(path)
        assert fp.split(":")[0] in ("jpeg", "png", "tiff", "webp")
        with Image.open(path) as im:
            flipped = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            flipped.save(tmp_path / f"flipped{path.suffix}", **({"lossless": True} if path.suffix == ".webp" else {}))
        assert fingerprint_file(tmp_path / f"flipped{path.suffix}") != fp
    if EXIFTOOL:
        for path in paths:
            fp = fingerprint_file(path)
            subprocess.run([EXIFTOOL, "-q", "-q", "-overwrite_original", "-Orientation#=6", str(path)], check=True)
            assert fingerprint_file(path) != fp, path.name  # decoded upright: another picture
    if EXIFTOOL:  # EXIF added for other fields, or an upright orientation: the same picture
        for path in _one_of_each(tmp_path / "fresh"):
            fp = fingerprint_file(path)
            subprocess.run(
                [EXIFTOOL, "-q", "-q", "-overwrite_original", "-Artist=someone", "-Orientation#=1", str(path)],
                check=True,
            )
            assert fingerprint_file(path) == fp, path.name
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0\x00")  # a JPEG that does not parse: hashed whole
    assert fingerprint_file(garbage).startswith("file:")


# -- item 4: ctime and inode; --rehash ------------------------------------------------------------


def test_content_changed_with_size_and_mtime_restored_is_embedded_again(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    path = lib / "a.bmp"
    _noise(1).save(path)
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--write", "none")
    _tag([lib], tiny_clip, cache, *opts)
    st = path.stat()
    _noise(2).save(path)  # same size (uncompressed), new pixels
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    files, summary = _tag([lib], tiny_clip, cache, *opts)
    assert summary["embedded"] == 1 and files[0]["embedded"] is True


def test_readers_of_the_cache_see_a_change_with_size_and_mtime_restored(tiny_clip, vocab_file, tmp_path) -> None:
    """`show`, `search --like` and `eval` read a file's vector without a run: the same identity rule
    as `tag` (size, mtime, ctime, inode), not size and mtime alone, else they score the old picture."""
    lib = tmp_path / "lib"
    lib.mkdir()
    a, b = lib / "a.bmp", lib / "b.bmp"
    _noise(1).save(a)
    _noise(2).save(b)
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    st = a.stat()
    shutil.copyfile(b, a)  # another program overwrites a in place with b's picture (same size) ...
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and restores the mtime (touch -r)
    assert (a.stat().st_size, a.stat().st_mtime_ns, a.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)

    def shown(path: Path) -> dict:
        return json.loads(_run(["show", str(path), "--cache", str(cache), "--json", "--top", "6"])[2])

    assert shown(a).get("scores") == shown(b)["scores"]
    _, _, out = _run(["search", "--like", str(a), str(lib), "--cache", str(cache), "--json", "--top", "1"])
    best = json.loads(out.splitlines()[0])
    assert best["path"] == str(b) and best["score"] == pytest.approx(1.0, abs=1e-3)


def test_rehash_checks_the_content_of_files_that_look_unchanged(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.png")
    _noise(2).save(lib / "b.png")
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "6", "--write", "none")
    first, _ = _tag([lib], tiny_clip, cache, *opts)
    # a change no identity check can see (a file system that keeps ctime and inode): b's row says
    # it held a's picture when it was recorded
    conn = sqlite3.connect(cache)
    conn.execute(
        "UPDATE files SET (content_id, fingerprint) = "
        "(SELECT content_id, fingerprint FROM files WHERE CAST(path AS TEXT) LIKE '%/a.png') "
        "WHERE CAST(path AS TEXT) LIKE '%/b.png'"
    )
    conn.commit()
    conn.close()
    stale, _ = _tag([lib], tiny_clip, cache, *opts)
    assert _by_name(stale)["b.png"]["tags"] == _by_name(first)["a.png"]["tags"]  # trusted the identity
    fixed, summary = _tag([lib], tiny_clip, cache, *opts, "--rehash")
    assert summary["embedded"] == 0  # b's own vector is still in the cache, under its fingerprint
    assert _by_name(fixed)["b.png"]["tags"] == _by_name(first)["b.png"]["tags"]


# -- items 5 and 6: roots -----------------------------------------------------------------------


def test_nested_roots_are_processed_once_each_with_its_own_settings(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "Lib"
    food = lib / "Food"
    food.mkdir(parents=True)
    for i in range(3):
        _noise(i).save(lib / f"l{i}.jpg")
        _noise(10 + i).save(food / f"f{i}.jpg")
    other = tmp_path / "food.txt"
    other.write_text(OTHER_VOCAB, encoding="utf-8")
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "1")
    _tag([food], tiny_clip, cache, "--tags", str(other), "--threshold", "-1", "--top-k", "1")

    files, summary, _ = _retag([], cache)
    assert summary["seen"] == 6 and len(files) == 6 and len({f["path"] for f in files}) == 6
    food_tags = {t["tag"] for f in files if "/Food/" in f["path"] for t in f["tags"]}
    assert food_tags <= set(OTHER_VOCAB.split())
    _, again, _ = _retag([], cache)
    assert again["written"] == 0  # no alternating keyword sets

    # a later run over the whole Lib takes Food over: one root, Lib's settings
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "1")
    with open_store(cache, readonly=True) as store:
        assert [p for p, _, _ in store.roots()] == [lib]


def test_an_interrupted_first_run_is_remembered(tiny_clip, vocab_file, tmp_path) -> None:
    from rtagx.run.events import RunEvents
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(3):
        _noise(i).save(lib / f"{i}.jpg")
    cache = tmp_path / "c.db"
    settings = load_settings(
        {"model": str(tiny_clip[0]), "pretrained": str(tiny_clip[1]), "cache": str(cache), "tags": str(vocab_file)}
    )

    def stop_at_embed(stage: str, total: int) -> None:
        if stage == "embed":
            raise KeyboardInterrupt  # Ctrl-C once the files are scanned, before any is written

    summary = run_tag([lib], settings, events=RunEvents(on_stage=stop_at_embed))
    assert summary.interrupted and summary.written == 0
    _, _, stats = _run(["cache", "stats", "--cache", str(cache), "--json"])
    assert json.loads(stats)["roots"] == [str(lib)]
    from rtagx.run.retag import known_roots

    assert lib in known_roots(settings)  # the first-write question is not asked again
    _, summary, _ = _retag([], cache)  # a root with nothing stored yet is no error
    assert summary["seen"] == 0


# -- item 7: untag leaves a clean state -------------------------------------------------------------


def test_untag_records_the_new_identity_and_forgets_the_root(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(3):
        _noise(i).save(lib / f"{i}.jpg")
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    _, untagged, _ = _run(["untag", str(lib), "--cache", str(cache), "--json"])
    assert untagged["written"] == 3

    _, _, out = _retag([], cache, expect=2)  # the root is forgotten: nothing to retag
    assert "no tagged folders" in out
    _, summary, _ = _retag([lib], cache)  # explicitly: the files are known as they are now
    assert summary["skipped"] == 0 and summary["seen"] == 3
    _run(["untag", str(lib), "--cache", str(cache), "--json"])
    _, again = _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    assert again["embedded"] == 0 and again["reused"] == 0


# -- item 8: failures remembered --------------------------------------------------------------------


def test_a_file_that_is_no_image_does_not_load_the_model_on_every_run(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    notes = lib / "notes.jpg"
    notes.write_text("shopping list\n", encoding="utf-8")
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file))
    first_files, first = _tag([lib], tiny_clip, cache, *opts, expect=3)
    assert first["skipped"] == 1
    files, second = _tag([lib], tiny_clip, cache, *opts, expect=3)
    assert second["skipped"] == 1 and "load-model" not in second["timings"] and "resolve-model" not in second["timings"]
    reason = _by_name(first_files)["notes.jpg"]["reason"]
    assert reason == "not-an-image" and _by_name(files)["notes.jpg"]["reason"] == reason
    _noise(2).save(notes, format="JPEG")  # it becomes an image: tried again
    _, third = _tag([lib], tiny_clip, cache, *opts)
    assert third["embedded"] == 1 and third["skipped"] == 0


# -- item 9: prune and retag without a cache ---------------------------------------------------------


def test_prune_forgets_a_renamed_root_and_retag_creates_no_cache(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    lib.rename(tmp_path / "renamed")
    _run(["cache", "prune", "--cache", str(cache)])
    _, _, stats = _run(["cache", "stats", "--cache", str(cache), "--json"])
    assert json.loads(stats)["roots"] == []

    missing = tmp_path / "none.db"
    _, _, out = _retag([], missing, expect=2)
    assert "no cache" in out and not missing.exists()


def test_prune_takes_the_lock_before_it_opens_or_migrates_the_cache(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--write", "none")
    conn = sqlite3.connect(cache)
    conn.execute("PRAGMA user_version = 3")  # pretend it still needs a migration
    conn.close()
    lock = WriterLock(cache)
    lock.acquire()
    try:
        _, _, out = _run(["cache", "prune", "--cache", str(cache), "--no-wait"], expect=4)
        assert "another rtagx is using the cache" in out
        conn = sqlite3.connect(cache)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3  # not touched
        conn.close()
    finally:
        lock.release()


# -- issue 19 item 9: untag and retag from what was recorded ----------------------------------------


@needs_exiftool
def test_untag_of_a_sidecar_run_needs_no_option(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    cache = tmp_path / "c.db"
    _tag([lib], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2", "--write", "sidecar")
    sidecar = lib / "a.jpg.xmp"
    assert len(_subjects(sidecar)) == 2
    _, summary, _ = _run(["untag", str(lib), "--cache", str(cache), "--json"])
    assert summary["written"] == 1
    assert not sidecar.exists() or _subjects(sidecar) == []


def test_retag_of_a_folder_whose_files_were_tagged_one_by_one(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(2):
        _noise(i).save(lib / f"{i}.jpg")
    cache = tmp_path / "c.db"
    for i in range(2):
        _tag([lib / f"{i}.jpg"], tiny_clip, cache, "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "1")
    files, summary, _ = _retag([lib], cache, "--top-k", "2")
    assert summary["seen"] == 2 and summary["written"] == 2
    assert all(len(f["tags"]) == 2 for f in files)


# -- issue 20 item 6: RAW + JPEG pairs are decided per path ----------------------------------------


def test_raw_copies_are_paired_per_path_not_per_content(tiny_clip, vocab_file, tmp_path) -> None:
    pytest.importorskip("rawpy")
    from test_decode_formats import make_dng

    picture = Image.effect_mandelbrot((256, 192), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    raw_picture = _noise(7, (256, 192))  # what the RAW itself decodes to: another picture
    paired, alone = tmp_path / "paired", tmp_path / "alone"
    paired.mkdir()
    alone.mkdir()
    picture.save(paired / "IMG_1.JPG", quality=92)
    make_dng(paired / "IMG_1.dng", raw_picture)
    shutil.copy2(paired / "IMG_1.dng", alone / "IMG_1.dng")  # byte-identical, no sibling
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "6", "--write", "none")

    for order in ([paired, alone], [alone, paired]):  # whichever is seen first
        if cache.exists():
            cache.unlink()
        for folder in order:
            _tag([folder], tiny_clip, cache, *opts)
        files, _ = _tag([paired, alone], tiny_clip, cache, *opts)
        got = {(Path(f["path"]).parent.name, Path(f["path"]).name): f["tags"] for f in files}
        assert got[("paired", "IMG_1.dng")] == got[("paired", "IMG_1.JPG")]
        assert got[("alone", "IMG_1.dng")] != got[("paired", "IMG_1.JPG")]

    # the JPEG goes: the RAW no longer follows it and gets the RAW's own vector (already cached)
    (paired / "IMG_1.JPG").unlink()
    files, summary = _tag([paired, alone], tiny_clip, cache, *opts)
    got = {(Path(f["path"]).parent.name, Path(f["path"]).name): f["tags"] for f in files}
    assert summary["embedded"] == 0
    assert got[("paired", "IMG_1.dng")] == got[("alone", "IMG_1.dng")]


# -- issue 12 item 4: untag and show use what was recorded ------------------------------------------


def test_untag_and_show_honour_the_caption_extension(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    cache = tmp_path / "c.db"
    opts = ("--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2")
    _tag([lib], tiny_clip, cache, *opts, "--write", "txt", "--caption-ext", ".caption")
    caption = lib / "a.caption"
    assert caption.exists()
    _, _, shown = _run(["show", str(lib / "a.jpg"), "--cache", str(cache), "--json"])
    assert len(json.loads(shown)["keywords"]) == 2 and json.loads(shown)["source"] == "txt"
    _run(["untag", str(lib), "--cache", str(cache), "--json"])
    assert not caption.exists()


def test_show_scores_with_the_templates_tag_used(tiny_clip, vocab_file, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    _noise(1).save(lib / "a.jpg")
    cache = tmp_path / "c.db"
    files, _ = _tag(
        [lib],
        tiny_clip,
        cache,
        "--tags",
        str(vocab_file),
        "--templates",
        "imagenet80",
        "--threshold",
        "-1",
        "--top-k",
        "6",
    )
    _, _, shown = _run(["show", str(lib / "a.jpg"), "--cache", str(cache), "--json", "--top", "6"])
    scores = dict(json.loads(shown)["scores"])
    for t in files[0]["tags"]:
        assert scores[t["tag"]] == pytest.approx(t["score"], abs=2e-3)


# -- issue 12: only the cache package runs SQL ------------------------------------------------------


def test_only_the_cache_package_runs_sql() -> None:
    root = Path(__file__).resolve().parent.parent / "rtagx"
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "cache":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"\.conn\b|\.execute\(|import sqlite3", text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
