"""End to end through the real CLI: tiny CLIP, real camera JPEGs, exiftool reads back what we wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtagx.cli.commands import cli

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is needed to read back keywords")


def _json_lines(output: str) -> tuple[list[dict], dict]:
    objs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    files = [o for o in objs if not o.get("summary")]
    summary = [o for o in objs if o.get("summary")]
    assert len(summary) == 1, output
    return files, summary[0]


def _exif_keywords(path: Path) -> dict:
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-a", "-struct", "-IPTC:Keywords", "-XMP-dc:Subject", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)[0]
    as_list = lambda v: v if isinstance(v, list) else ([] if v is None else [v])  # noqa: E731
    return {
        "iptc": [str(k) for k in as_list(data.get("IPTC:Keywords"))],
        "xmp": [str(k) for k in as_list(data.get("XMP-dc:Subject"))],
    }


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "tags.txt"
    path.write_text("# a small vocabulary\ndog\ncat\nmountain\nbeach\ncar\nfood\n", encoding="utf-8")
    return path


def run(args: list[str], tiny_clip, cache: Path, **kw):
    cfg, ckpt = tiny_clip
    runner = CliRunner()
    return runner.invoke(
        cli,
        ["tag", *args, "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache), "--yes"],
        catch_exceptions=False,
        **kw,
    )


def test_tag_writes_keywords_exiftool_reads_them_and_second_run_embeds_nothing(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache.sqlite3"
    result = run(
        [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "3", "--json"], tiny_clip, cache
    )
    assert result.exit_code == 3, result.output  # the corrupt sample is skipped: "some files skipped"
    files, summary = _json_lines(result.output)
    assert summary["seen"] == 5 and summary["embedded"] == 4 and summary["skipped"] == 1
    assert summary["written"] == 4 and summary["skip_reasons"]
    for key in ("seen", "embedded", "reused", "written", "unchanged", "skipped"):
        assert isinstance(summary[key], int)
    by_name = {Path(f["path"]).name: f for f in files}
    assert by_name["corrupted.jpg"]["action"] == "skipped" and by_name["corrupted.jpg"]["reason"]
    for name in ("Canon_40D.jpg", "Nikon_D70.jpg", "Fujifilm_FinePix_E500.jpg", "Pentax_K10D.jpg"):
        record = by_name[name]
        assert record["action"] == "written"
        tags = [t["tag"] for t in record["tags"]]
        assert len(tags) == 3 and all(isinstance(t["score"], float) for t in record["tags"])
        found = _exif_keywords(photo_dir / name)
        assert sorted(found["iptc"]) == sorted(tags)
        assert sorted(found["xmp"]) == sorted(tags)

    again = run(
        [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "3", "--json"], tiny_clip, cache
    )
    _, summary2 = _json_lines(again.output)
    assert summary2["embedded"] == 0
    assert summary2["written"] == 0 and summary2["unchanged"] == 4


def test_dry_run_prints_tags_and_writes_nothing(tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    result = run(
        [str(photo_dir / "Canon_40D.jpg"), "--tags", str(vocab_file), "--threshold", "-1", "--dry-run"],
        tiny_clip,
        tmp_path / "c.sqlite3",
    )
    assert result.exit_code == 0, result.output
    assert "Canon_40D.jpg" in result.output and "dog" in result.output
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before


def test_rename_reuses_vector(tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite3"
    args = [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2", "--json"]
    run(args, tiny_clip, cache)
    (photo_dir / "Canon_40D.jpg").rename(photo_dir / "renamed.jpg")
    sub = photo_dir / "moved"
    sub.mkdir()
    (photo_dir / "Nikon_D70.jpg").rename(sub / "Nikon_D70.jpg")
    result = run(args, tiny_clip, cache)
    _files, summary = _json_lines(result.output)
    assert summary["embedded"] == 0 and summary["reused"] == 2


def test_edited_file_is_embedded_again(tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    cache = tmp_path / "c.sqlite3"
    args = [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2", "--json"]
    run(args, tiny_clip, cache)
    target = photo_dir / "Pentax_K10D.jpg"
    with Image.open(target) as im:
        im.convert("L").convert("RGB").save(target, quality=80)
    _, summary = _json_lines(run(args, tiny_clip, cache).output)
    assert summary["embedded"] == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "1.5"], "threshold"),
        (["--threshold", "-2"], "threshold"),
        (["--model", "no-such-model"], "unknown model"),
        (["--pretrained", "/nonexistent/weights.pt"], "checkpoint file not found"),
        (["--pretrained", "no_such_tag"], "unknown pretrained tag"),
    ],
)
def test_bad_options_fail_cleanly_touching_nothing(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    cfg, ckpt = tiny_clip
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    args = [
        "tag",
        str(photo_dir),
        "--tags",
        str(vocab_file),
        "--model",
        str(cfg),
        "--pretrained",
        str(ckpt),
        "--cache",
        str(tmp_path / "c.sqlite3"),
        "--yes",
        *extra,
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before


@pytest.mark.parametrize("content", ["", "# only a comment\n\n"])
def test_empty_vocabulary_fails_cleanly(tiny_clip, photo_dir: Path, tmp_path: Path, content: str) -> None:
    vocab = tmp_path / "empty.txt"
    vocab.write_text(content)
    result = run([str(photo_dir), "--tags", str(vocab)], tiny_clip, tmp_path / "c.sqlite3")
    assert result.exit_code == 1 and "empty.txt" in result.output and "Traceback" not in result.output


def test_missing_and_unreadable_inputs(tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path) -> None:
    result = run([str(tmp_path / "nope"), "--tags", str(vocab_file)], tiny_clip, tmp_path / "c.sqlite3")
    assert result.exit_code == 2 and "path not found" in result.output
    result = run([str(photo_dir), "--tags", str(tmp_path / "no-vocab.txt")], tiny_clip, tmp_path / "c.sqlite3")
    assert result.exit_code == 1 and "no-vocab.txt" in result.output
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked.txt"
        locked.write_text("dog\n")
        locked.chmod(0)
        result = run([str(photo_dir), "--tags", str(locked)], tiny_clip, tmp_path / "c.sqlite3")
        assert result.exit_code == 1


def test_default_model_weights_missing_offline_is_one_line(
    photo_dir: Path, vocab_file: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("RTAGX_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    result = CliRunner().invoke(
        cli, ["tag", str(photo_dir), "--tags", str(vocab_file), "--cache", str(tmp_path / "c.sqlite3"), "--yes"]
    )
    assert result.exit_code == 1
    assert "ViT-B-16" in result.output and "dfn2b" in result.output and "--pretrained" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before


def test_python_dash_m_and_version() -> None:
    out = subprocess.run([os.sys.executable, "-m", "rtagx", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "rtagx" in out.stdout


def test_cache_env_var_and_default_location(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTAGX_CACHE", str(tmp_path / "env-cache.sqlite3"))
    result = CliRunner().invoke(cli, ["cache", "path"])
    assert result.output.strip() == str(tmp_path / "env-cache.sqlite3")
    monkeypatch.delenv("RTAGX_CACHE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(cli, ["cache", "path"])
    assert result.output.strip() == str(tmp_path / "xdg" / "rtagx" / "cache.sqlite3")


def test_retag_rescores_from_the_cache_and_keeps_a_persons_keywords_then_untag(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite3"
    image = photo_dir / "Nikon_D70.jpg"
    subprocess.run(
        [
            "exiftool",
            "-q",
            "-overwrite_original",
            "-Keywords=Grandma",
            "-XMP-dc:Subject=Grandma",
            "-XMP-dc:Subject=dog",
            "-Keywords=dog",
            str(image),
        ],
        check=True,
    )
    first = run(
        [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2", "--json"], tiny_clip, cache
    )
    files, _ = _json_lines(first.output)
    chosen = [t["tag"] for t in next(f for f in files if f["path"].endswith("Nikon_D70.jpg"))["tags"]]
    assert set(_exif_keywords(image)["xmp"]) == {"Grandma", "dog", *chosen}

    # retag needs no model options: the cache remembers the model, the vocabulary and the folder
    runner = CliRunner()
    result = runner.invoke(cli, ["retag", "--cache", str(cache), "--top-k", "4", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files, summary = _json_lines(result.output)
    assert summary["embedded"] == 0 and summary["reused"] == 4 and summary["written"] == 4
    assert "decode" not in summary["timings"] and "encode" not in summary["timings"]
    chosen4 = [t["tag"] for t in next(f for f in files if f["path"].endswith("Nikon_D70.jpg"))["tags"]]
    assert len(chosen4) == 4 and chosen4[:2] == chosen
    after = _exif_keywords(image)
    assert set(after["xmp"]) == {"Grandma", "dog", *chosen4} and sorted(after["iptc"]) == sorted(after["xmp"])

    # the same retag again changes nothing; tag afterwards is settled from the cache too
    again = runner.invoke(cli, ["retag", "--cache", str(cache), "--top-k", "4", "--json"], catch_exceptions=False)
    assert _json_lines(again.output)[1]["written"] == 0

    # untag removes exactly rtagx's keywords: the person's "Grandma" and "dog" stay
    result = runner.invoke(cli, ["untag", str(photo_dir), "--cache", str(cache), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output  # corrupted.jpg: metadata readable, nothing of rtagx in it
    final = _exif_keywords(image)
    assert sorted(final["xmp"]) == ["Grandma", "dog"] and sorted(final["iptc"]) == ["Grandma", "dog"]
    for name in ("Canon_40D.jpg", "Pentax_K10D.jpg"):
        assert _exif_keywords(photo_dir / name) == {"iptc": [], "xmp": []}


def test_retag_with_a_new_vocabulary_encodes_only_its_new_prompts(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite3"
    run([str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2"], tiny_clip, cache)
    bigger = tmp_path / "bigger.txt"
    bigger.write_text(vocab_file.read_text() + "sunset\nbicycle\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["retag", "--cache", str(cache), "--tags", str(bigger), "--threshold", "-1", "--top-k", "8", "--json"],
        catch_exceptions=False,
    )
    files, summary = _json_lines(result.output)
    assert summary["embedded"] == 0 and "load-model" in summary["timings"]
    assert all(len(f["tags"]) == 8 for f in files if f["action"] != "skipped")
    # missing files are reported, not crashed on
    (photo_dir / "Canon_40D.jpg").unlink()
    result = CliRunner().invoke(cli, ["retag", "--cache", str(cache), "--json"], catch_exceptions=False)
    files, summary = _json_lines(result.output)
    assert result.exit_code == 3 and summary["skip_reasons"] == {"missing": 1}


def test_temp_files_of_a_killed_writer_are_removed_even_by_a_no_op_run(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "c.sqlite3"
    args = [str(photo_dir), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "2", "--json"]
    run(args, tiny_clip, cache)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = photo_dir / f".Canon_40D.jpg.{dead.pid}.k3x9q2.rtagx-tmp"
    stale.write_bytes(b"half a photo")
    alive = photo_dir / f".Nikon_D70.jpg.{os.getppid()}.a1b2c3.rtagx-tmp"  # a live process's write in progress
    alive.write_bytes(b"being written")
    _, summary = _json_lines(run(args, tiny_clip, cache).output)
    assert summary["written"] == 0 and summary["embedded"] == 0
    assert not stale.exists() and alive.exists()


def test_a_decoder_that_never_returns_is_skipped_and_the_run_goes_on(
    tiny_clip, photo_dir: Path, vocab_file: Path, tmp_path: Path, monkeypatch
) -> None:
    """Stands in for a decoder stuck in a loop on a hostile file: the only way to get a real decoder
    to hang on demand is to make it wait, so this one file's decode blocks on an event."""
    import threading

    from rtagx.imaging import decode
    from rtagx.run import local as pipeline

    release = threading.Event()
    real = decode.decode_for_model

    def decode_for_model(path, spec, **kw):
        if Path(path).name == "Pentax_K10D.jpg":
            release.wait(30)
        return real(path, spec, **kw)

    monkeypatch.setattr(decode, "decode_for_model", decode_for_model)
    monkeypatch.setenv("RTAGX_DECODE_TIMEOUT", "1")
    monkeypatch.setattr(pipeline, "STUCK_DECODERS", [])
    try:
        result = run(
            [
                str(photo_dir),
                "--tags",
                str(vocab_file),
                "--threshold",
                "-1",
                "--top-k",
                "2",
                "--json",
                "--workers",
                "2",
            ],
            tiny_clip,
            tmp_path / "c.sqlite3",
        )
    finally:
        release.set()
    _files, summary = _json_lines(result.output)
    assert result.exit_code == 3
    assert summary["skip_reasons"] == {"corrupt": 1, "decode-timeout": 1} and summary["written"] == 3
    assert [Path(p).name for p in pipeline.STUCK_DECODERS] == ["Pentax_K10D.jpg"]
