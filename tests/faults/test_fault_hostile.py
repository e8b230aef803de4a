"""Scenario 4: hostile inputs. Each one: no crash, no hang (every run has a timeout), a precise skip
reason in ``--json`` output (or the file is written intact), nothing damaged.

One real ``rtagx tag`` run over a folder of hostile files is shared by the tests of this module (each
rtagx start costs ~3 s of torch import); the special cases that need other options run on their own.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import threading
from pathlib import Path

import faultlib
import pytest
from faultlib import SAMPLES

LONG_NAME = "L" * 251 + ".jpg"  # 255 bytes, the longest name ext4 allows
NEWLINE_NAME = "new\nline.jpg"
BAD_UTF8_NAME = b"bad\xff\xfe-utf8.jpg"


def _digest(path: Path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def _json_key(path: Path | bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _keywords_via_link(path: Path | bytes, work: Path) -> faultlib.KwState:
    """exiftool reads the file through a hard link with a plain name (same inode, same bytes)."""
    probe = work / "probe"
    probe.mkdir(exist_ok=True)
    link = probe / f"p{len(os.listdir(probe))}{os.path.splitext(os.fsdecode(path))[1]}"
    os.link(path, link)
    return faultlib.keyword_states([link])[link]


@pytest.fixture(scope="module")
def hostile(tiny_clip, tmp_path_factory):
    """Build the hostile folder, record every file's bytes, run ``rtagx tag --follow-symlinks`` once."""
    work = tmp_path_factory.mktemp("hostile")
    lib = work / "lib"
    expect = faultlib.make_hostile(lib)
    sample = SAMPLES / "jpg" / "Canon_40D.jpg"
    # a directory symlink loop (followed on purpose) with one real photo inside
    loop = lib / "loop"
    loop.mkdir()
    shutil.copyfile(sample, loop / "in_loop.jpg")
    os.symlink("..", loop / "parent")
    os.symlink(".", loop / "self")
    expect[loop / "in_loop.jpg"] = "written"
    # odd names: a newline, bytes that are not UTF-8, 255 bytes
    names = lib / "names"
    names.mkdir()
    shutil.copyfile(sample, names / NEWLINE_NAME)
    expect[names / NEWLINE_NAME] = "written"
    bad = os.path.join(os.fsencode(names), BAD_UTF8_NAME)
    shutil.copyfile(sample, bad)
    expect[Path(os.fsdecode(bad))] = "written"
    shutil.copyfile(sample, names / LONG_NAME)
    # read-only file and read-only folder (rtagx refuses by mode bits, so this holds for root too)
    ro = lib / "readonly"
    ro.mkdir()
    shutil.copyfile(sample, ro / "ro_file.jpg")
    os.chmod(ro / "ro_file.jpg", 0o444)
    expect[ro / "ro_file.jpg"] = {"read-only"}
    rodir = lib / "readonly_folder"
    rodir.mkdir()
    shutil.copyfile(sample, rodir / "in_ro_folder.jpg")
    os.chmod(rodir, 0o555)
    expect[rodir / "in_ro_folder.jpg"] = {"read-only"}
    all_files = [*expect, names / LONG_NAME]
    before = {p: _digest(p) for p in all_files}
    pixels = faultlib.snapshot(
        [p for p in all_files if expect.get(p) in ("written", "written-or-skip") or p == names / LONG_NAME]
    )
    vocab = work / "vocab.txt"
    vocab.write_text(faultlib.VOCAB_A)
    result = faultlib.run_rtagx(
        faultlib.tag_args([lib], tiny_clip, work / "cache.sqlite3", vocab, "--follow-symlinks"), work
    )
    yield {"work": work, "lib": lib, "expect": expect, "before": before, "pixels": pixels, "result": result}
    os.chmod(rodir, 0o755)


def test_hostile_run_ends_cleanly(hostile) -> None:
    r = hostile["result"]
    assert r.rc == 3, r.describe()  # finished, some files skipped
    assert r.summary is not None and not r.summary["interrupted"]
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def test_every_hostile_file_has_a_precise_outcome(hostile) -> None:
    assert faultlib.skip_problems(hostile["result"], hostile["expect"]) == []


def test_skipped_files_keep_their_bytes_and_written_ones_their_pixels(hostile) -> None:
    r = hostile["result"]
    skipped = {f["path"] for f in r.files if f["action"] == "skipped"}
    for p, digest in hostile["before"].items():
        if _json_key(p) in skipped:
            assert _digest(p) == digest, f"{p}: skipped but changed"
    assert faultlib.damaged(hostile["pixels"]) == []
    assert faultlib.leftovers(hostile["lib"], set(hostile["before"])) == []


def test_truncated_jpegs_are_reported_as_truncated_not_corrupt(hostile) -> None:
    """Cuts past the JPEG header must say 'truncated' (the user can re-copy the file), not 'corrupt'."""
    r = hostile["result"]
    wrong = [
        (Path(f["path"]).name, f["reason"], f["detail"])
        for f in r.files
        if "/truncated/" in f["path"]
        and "_cut" in f["path"]
        and f["action"] == "skipped"
        and int(Path(f["path"]).stem.rsplit("cut", 1)[1]) >= 200
        and f["reason"] != "truncated"
    ]
    assert wrong == []


def test_jpegs_cut_in_their_first_bytes_are_truncated(hostile) -> None:
    r = hostile["result"]
    wrong = [
        (Path(f["path"]).name, f["reason"], f["detail"])
        for f in r.files
        if "/truncated/" in f["path"]
        and "_cut" in f["path"]
        and f["action"] == "skipped"
        and 2 <= int(Path(f["path"]).stem.rsplit("cut", 1)[1]) < 200
        and f["reason"] != "truncated"
    ]
    assert wrong == []


def test_no_raw_python_warnings_on_stderr(hostile) -> None:
    assert "Warning:" not in hostile["result"].stderr, hostile["result"].stderr


def test_bomb_png_is_too_large(hostile) -> None:
    f = hostile["result"].by_name()["bomb_30000x30000.png"]
    assert f["action"] == "skipped" and f["reason"] == "too-large" and "900" in f["detail"]


def test_symlink_loop_is_followed_once(hostile) -> None:
    lines = [f for f in hostile["result"].files if f["path"].endswith("in_loop.jpg")]
    assert len(lines) == 1 and lines[0]["action"] == "written", lines


def test_odd_names_are_written_and_read_back(hostile) -> None:
    names = hostile["lib"] / "names"
    by_path = {f["path"]: f for f in hostile["result"].files}
    for p in (names / NEWLINE_NAME, Path(os.fsdecode(os.path.join(os.fsencode(names), BAD_UTF8_NAME)))):
        f = by_path[_json_key(p)]
        assert f["action"] == "written", f
        state = _keywords_via_link(p, hostile["work"])
        tags = sorted(t["tag"] for t in f["tags"])
        assert sorted(state.xmp) == tags and sorted(state.iptc) == tags, state


def test_255_byte_name_is_written(hostile) -> None:
    f = hostile["result"].by_name()[LONG_NAME]
    assert f["action"] == "written", f


def test_read_only_file_and_folder_are_skipped_as_read_only(hostile) -> None:
    by_name = hostile["result"].by_name()
    assert by_name["ro_file.jpg"]["reason"] == "read-only"
    assert by_name["in_ro_folder.jpg"]["reason"] == "read-only"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode: cannot make one unreadable")
def test_unreadable_file_is_skipped_as_permission_denied(model, tmp_path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    p = lib / "secret.jpg"
    shutil.copyfile(SAMPLES / "jpg" / "Canon_40D.jpg", p)
    os.chmod(p, 0)
    try:
        vocab = tmp_path / "v.txt"
        vocab.write_text(faultlib.VOCAB_A)
        r = faultlib.run_rtagx(faultlib.tag_args([lib], model, tmp_path / "c.sqlite3", vocab), tmp_path)
    finally:
        os.chmod(p, 0o644)
    assert r.rc == 3, r.describe()
    f = r.by_name()["secret.jpg"]
    assert f["action"] == "skipped" and f["reason"] == "permission-denied", f
    assert _digest(p) == _digest(SAMPLES / "jpg" / "Canon_40D.jpg")


@pytest.fixture(scope="module")
def guard_run(tiny_clip, tmp_path_factory):
    """--max-megapixels 1 and --write sidecar over a big image, a bomb, a broken sidecar, a small photo."""
    from PIL import Image

    tmp_path = tmp_path_factory.mktemp("guard")
    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (1500, 1000), (90, 120, 150)).save(lib / "big_1.5mp.jpg", quality=70)
    Image.new("RGB", (600, 500), (150, 120, 90)).save(lib / "small.jpg", quality=70)
    shutil.copyfile(SAMPLES / "jpg" / "Nikon_D70.jpg", lib / "broken_sidecar.jpg")
    broken = lib / "broken_sidecar.jpg.xmp"
    broken.write_bytes(b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description <<< not xml')
    (lib / "bomb.png").write_bytes(faultlib.bomb_png(30000, 30000))
    before = {p: _digest(p) for p in lib.iterdir()}
    vocab = tmp_path / "v.txt"
    vocab.write_text(faultlib.VOCAB_A)
    r = faultlib.run_rtagx(
        faultlib.tag_args(
            [lib], tiny_clip, tmp_path / "c.sqlite3", vocab, "--max-megapixels", "1", "--write", "sidecar"
        ),
        tmp_path,
    )
    return lib, before, r


def test_max_megapixels_guard_and_invalid_sidecar(guard_run) -> None:
    """--max-megapixels skips a large image before decoding it; --write sidecar leaves a sidecar that
    is not valid XML untouched (bad-sidecar) and writes a fresh one where none existed."""
    lib, before, r = guard_run
    assert r.rc == 3, r.describe()
    assert "Traceback" not in r.stderr
    by = r.by_name()
    assert by["big_1.5mp.jpg"]["reason"] == "too-large" and "1500x1000" in by["big_1.5mp.jpg"]["detail"]
    assert by["bomb.png"]["reason"] == "too-large"
    assert by["broken_sidecar.jpg"]["action"] == "skipped" and by["broken_sidecar.jpg"]["reason"] == "bad-sidecar"
    assert by["small.jpg"]["action"] == "written"
    for p, digest in before.items():  # sidecar mode never touches a photo; the broken sidecar stays as it was
        assert _digest(p) == digest, p
    new_sidecar = lib / "small.jpg.xmp"
    state = faultlib.keyword_states([new_sidecar])[new_sidecar]
    assert sorted(state.xmp) == sorted(t["tag"] for t in by["small.jpg"]["tags"])
    assert faultlib.leftovers(lib, set(before)) == []


def test_too_large_detail_gives_exact_megapixels(guard_run) -> None:
    _lib, _before, r = guard_run
    detail = r.by_name()["big_1.5mp.jpg"]["detail"]
    assert "1.5 MP" in detail, detail


def test_vocabulary_with_a_10000_character_line(model, tmp_path) -> None:
    """Either a one-line vocabulary error (exit 1, nothing touched) or the run works: the keyword lands
    in XMP whole and in IPTC cut at 64 bytes; photos keep their pixels."""
    lib = tmp_path / "lib"
    files = faultlib.copy_samples(lib, ["Canon_40D.jpg", "Pentax_K10D.jpg"], subdirs=False, tiff=False, heif=False)
    before = faultlib.snapshot(files)
    raw = {p: p.read_bytes() for p in files}
    rng = random.Random(5)
    long_tag = "".join(rng.choice("abcdefghij klmnoé") for _ in range(10_000)).replace("  ", " a")
    vocab = tmp_path / "v.txt"
    vocab.write_text(f"dog\n{long_tag}\ncat\n", encoding="utf-8")
    r = faultlib.run_rtagx(faultlib.tag_args([lib], model, tmp_path / "c.sqlite3", vocab), tmp_path)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.describe()
    if r.rc == 1:
        assert faultlib.one_line_error(r.stderr), r.describe()
        assert all(p.read_bytes() == raw[p] for p in files)
        return
    assert r.rc in (0, 3), r.describe()
    assert faultlib.damaged(before) == []
    states = faultlib.keyword_states(files)
    for f in r.files:
        if f["action"] != "written":
            assert f["action"] == "skipped" and f["reason"] and f["detail"], f
            continue
        tags = [t["tag"] for t in f["tags"]]
        state = states[Path(f["path"])]
        assert sorted(state.xmp) == sorted(tags)
        assert all(len(k.encode()) <= 64 for k in state.iptc)
        if long_tag.strip() in tags:
            assert any(long_tag.strip().encode()[:64].decode("utf-8", "ignore") == k for k in state.iptc), state.iptc


def test_files_deleted_or_replaced_mid_run(tiny_clip, tmp_path) -> None:
    """Library level (rtagx.run.tag.run_tag in this process, real files): once the scan is done and
    embedding starts, some files are deleted, one replaced by random bytes, one by another photo, one
    by a folder; as the first batch is stored (before its keywords are written) another is deleted.
    Each must end as a precise skip, or written with intact pixels; the run must finish."""
    from rtagx.run.events import RunEvents
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    lib = tmp_path / "lib"
    files = faultlib.copy_samples(lib, faultlib.CAMERA_JPEGS[:10], subdirs=False, tiff=False, heif=False)
    files += faultlib.make_generated(lib / "gen", random.Random(2), count_per_format=1)
    vocab = tmp_path / "v.txt"
    vocab.write_text(faultlib.VOCAB_A)
    cfg, ckpt = tiny_clip
    config = tmp_path / "config.toml"
    config.write_text("")  # an explicit empty config: the user's own never leaks in
    settings = load_settings(
        {
            "model": str(cfg),
            "pretrained": str(ckpt),
            "cache": str(tmp_path / "c.sqlite3"),
            "tags": str(vocab),
            "threshold": -1.0,
            "top_k": 3,
            "batch_size": 4,
            "workers": 1,
        },
        config_path=config,
        environ={},
    )
    deleted = [lib / "Canon_40D.jpg", lib / "gen" / "gen_0_rgb.png"]
    garbage = lib / "Nikon_D70.jpg"
    swapped = lib / "Kodak_CX7530.jpg"
    folder = lib / "gen" / "gen_0_lossy.webp"
    late = lib / "gen" / "gen_0_raw.tif"  # in the second batch: deleted after the first batch is stored
    outcomes = []
    stage_seen = threading.Event()

    def on_stage(name: str, total: int) -> None:
        if name == "embed" and not stage_seen.is_set():
            stage_seen.set()
            for p in deleted:
                p.unlink()
            garbage.write_bytes(random.Random(1).randbytes(4000))
            shutil.copyfile(SAMPLES / "jpg" / "Sony_HDR-HC3.jpg", swapped)
            folder.unlink()
            folder.mkdir()

    def on_progress(name: str, n: int) -> None:
        if name == "embed" and late.exists():
            late.unlink()

    swapped_pixels = faultlib.snapshot([SAMPLES / "jpg" / "Sony_HDR-HC3.jpg"])[SAMPLES / "jpg" / "Sony_HDR-HC3.jpg"]
    others = [p for p in files if p not in (*deleted, garbage, swapped, folder, late)]
    before = faultlib.snapshot(others)
    summary = run_tag(
        [lib], settings, events=RunEvents(on_file=outcomes.append, on_stage=on_stage, on_progress=on_progress)
    )
    assert stage_seen.is_set() and not summary.interrupted
    by = {o.path: o for o in outcomes}
    for p in deleted:
        assert by[p].action == "skipped" and by[p].reason == "missing", by[p]
    assert by[garbage].action == "skipped" and by[garbage].reason in faultlib.GARBAGE_OK, by[garbage]
    assert by[folder].action == "skipped" and by[folder].reason in {"not-a-file", "missing"}, by[folder]
    assert by[late].action == "skipped" and by[late].reason == "missing", by[late]
    assert by[swapped].action == "written"
    assert faultlib.pixel_digest(swapped) == swapped_pixels.pixels
    assert faultlib.damaged(before) == []
    for p in others:
        assert by[p].action == "written", by[p]
    assert summary.skipped == len(deleted) + 3
    assert stat.S_ISDIR(os.stat(folder).st_mode)
