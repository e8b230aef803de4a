"""Several models in one run (issue 15 item 5): the tiny CLIP and the tiny WD14 tagger together give
each file the union of the keywords the two single-model runs give, written once and owned by rtagx;
a second run embeds nothing, retag rewrites the union, untag leaves the files as they were."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtagx.cli.commands import cli

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tiny_taggers import build_wd14

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool reads back the keywords")


@pytest.fixture(scope="module")
def wd14_dir(tmp_path_factory) -> Path:
    return build_wd14(tmp_path_factory.mktemp("wd14") / "tiny-wd14", size=64)


def _keywords(path: Path) -> list[str]:
    out = subprocess.run(
        ["exiftool", "-j", "-IPTC:Keywords", "-XMP-dc:Subject", str(path)], capture_output=True, text=True, check=True
    )
    row = json.loads(out.stdout)[0]
    iptc, xmp = row.get("Keywords", []), row.get("Subject", [])
    iptc = [str(v) for v in (iptc if isinstance(iptc, list) else [iptc])]
    xmp = [str(v) for v in (xmp if isinstance(xmp, list) else [xmp])]
    assert iptc == xmp, path.name  # IPTC and XMP in step
    return iptc


def _union(*lists: list[str]) -> list[str]:
    out: list[str] = []
    for keywords in lists:
        out.extend(k for k in keywords if k.casefold() not in {o.casefold() for o in out})
    return out


def _summary(output: str) -> dict:
    return [json.loads(line) for line in output.splitlines() if '"summary"' in line][-1]


def _copy(photo_dir: Path, dest: Path) -> Path:
    shutil.copytree(photo_dir, dest)
    return dest


def test_two_models_unite_keywords_and_retag_untag_treat_the_union_as_rtagx(
    tiny_clip, wd14_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    cfg, ckpt = tiny_clip
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\nmountain\nbeach\ncar\nfood\n", encoding="utf-8")
    originals = {p.name: p.read_bytes() for p in photo_dir.glob("*.jpg")}
    photos = sorted(p.name for p in photo_dir.glob("*.jpg") if p.name != "corrupted.jpg")
    runner = CliRunner()
    clip = ["--model", str(cfg), "--pretrained", str(ckpt)]
    wd = ["--model", str(wd14_dir)]
    common = ["--min-tags", "2", "--yes", "--json"]
    tags = ["--tags", str(vocab)]  # a CLIP vocabulary: the tagger of a several-model run keeps its own tags

    def tag(folder: Path, models: list[str], cache: Path, *more: str):
        return runner.invoke(
            cli, ["tag", str(folder), *models, "--cache", str(cache), *common, *more], catch_exceptions=False
        )

    only_clip, only_wd = _copy(photo_dir, tmp_path / "clip"), _copy(photo_dir, tmp_path / "wd")
    assert tag(only_clip, clip, tmp_path / "c1.sqlite3", *tags).exit_code == 3  # the corrupt sample is skipped
    assert tag(only_wd, wd, tmp_path / "c2.sqlite3").exit_code == 3
    cache = tmp_path / "both.sqlite3"
    result = tag(photo_dir, [*clip, *wd], cache, *tags)
    assert result.exit_code == 3, result.output
    summary = _summary(result.output)
    assert summary["seen"] == len(photos) + 1  # each file counted once
    assert summary["embedded"] == 2 * len(photos)  # one embedding per file and model
    before = {}
    for name in photos:
        first, second = _keywords(only_clip / name), _keywords(only_wd / name)
        assert first and second
        before[name] = _keywords(photo_dir / name)
        assert before[name] == _union(first, second), name

    # a second run embeds nothing and touches nothing
    result = tag(photo_dir, [*clip, *wd], cache, *tags)
    summary = _summary(result.output)
    assert summary["embedded"] == 0 and summary["written"] == 0, result.output

    # retag with a new threshold re-scores with both models (no decoding) and rewrites the union
    for folder, c in ((only_clip, "c1"), (only_wd, "c2"), (photo_dir, "both")):
        result = runner.invoke(
            cli,
            ["retag", str(folder), "--threshold", "0.9", "--cache", str(tmp_path / f"{c}.sqlite3"), "--json"],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert _summary(result.output)["embedded"] == 0
    for name in photos:
        assert _keywords(photo_dir / name) == _union(_keywords(only_clip / name), _keywords(only_wd / name)), name
    assert any(_keywords(photo_dir / name) != before[name] for name in photos)  # the union was rewritten

    # untag removes every keyword of both models: the files are as before
    result = runner.invoke(cli, ["untag", str(photo_dir), "--cache", str(cache)], catch_exceptions=False)
    assert result.exit_code in (0, 3), result.output
    for name in photos:
        assert _keywords(photo_dir / name) == _keywords_of(originals[name], tmp_path), name


def _keywords_of(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "original.jpg"
    path.write_bytes(data)
    return _keywords(path)


def test_a_single_model_remembers_no_further_models(tiny_clip, photo_dir: Path, tmp_path: Path) -> None:
    from rtagx.cache.store import open_store

    cfg, ckpt = tiny_clip
    cache = tmp_path / "cache.sqlite3"
    result = CliRunner().invoke(
        cli,
        ["tag", str(photo_dir), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache), "--yes"],
        catch_exceptions=False,
    )
    assert result.exit_code == 3, result.output
    with open_store(cache, readonly=True) as store:
        (_, remembered, _), *_ = store.roots()
    assert "extra_models" not in remembered and remembered["model"] == str(cfg)


def test_more_pretrained_than_models_is_a_usage_error(photo_dir: Path, tmp_path: Path) -> None:
    args = [
        "tag",
        str(photo_dir),
        "-m",
        "x",
        "-m",
        "y",
        "-p",
        "a",
        "-p",
        "b",
        "-p",
        "c",
        "--cache",
        str(tmp_path / "c"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "--pretrained" in result.output


def test_keywords_of_further_models_join_the_first_models_once_whatever_their_case() -> None:
    from rtagx.run.tagger import Tagger

    first, second, third = (Tagger.__new__(Tagger) for _ in range(3))
    second.collect = {b"k": (["Dog", "long hair"], ["animals|Dog"], [("Dog", 0.9), ("long hair", 0.5)])}
    third.collect = {b"k": (["LONG HAIR", "sky"], [], [("sky", 0.4)])}
    first.extra = [second, third]
    flat, hier, tags = ["dog", "beach"], ["animals|dog"], [("dog", 0.3), ("beach", 0.2)]
    first.merged(b"k", flat, hier, tags)
    assert flat == ["dog", "beach", "long hair", "sky"]
    assert hier == ["animals|dog"]
    assert [t for t, _ in tags] == ["dog", "beach", "Dog", "long hair", "sky"]
