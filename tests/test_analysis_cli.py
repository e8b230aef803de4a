"""explain / eval / calibrate through the real CLI, relative scoring flags, and RAW+JPEG siblings."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from rtagx.cli.commands import cli

VOCAB = "dog\ncat\nmountain\nbeach\ncar\nfood\n"


def invoke(command: str, args: list[str], tiny_clip, cache: Path):
    cfg, ckpt = tiny_clip
    return CliRunner().invoke(
        cli,
        [command, *args, "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache)],
        catch_exceptions=False,
    )


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "tags.txt"
    path.write_text(VOCAB, encoding="utf-8")
    return path


def test_explain_lists_scores_and_verdicts_and_writes_nothing(tiny_clip, photo_dir, vocab_file, tmp_path):
    image = photo_dir / "Canon_40D.jpg"
    before = image.read_bytes()
    result = invoke(
        "explain", [str(image), "--tags", str(vocab_file), "--threshold", "0", "--json"], tiny_clip, tmp_path / "c.db"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert len(data["tags"]) == 6
    scores = [t["score"] for t in data["tags"]]
    assert scores == sorted(scores, reverse=True)
    # verdicts agree with the threshold, and chosen equals the tags at or above it
    assert data["chosen"] == [t["tag"] for t in data["tags"] if t["score"] >= 0]
    for t in data["tags"]:
        assert ("chosen" in t["reason"]) == t["chosen"]
    assert image.read_bytes() == before
    text = invoke("explain", [str(image), "--tags", str(vocab_file)], tiny_clip, tmp_path / "c.db")
    assert "threshold 0.2500 cosine from model default" in text.output


def test_margin_keeps_only_tags_near_the_best(tiny_clip, photo_dir, vocab_file, tmp_path):
    image = photo_dir / "Nikon_D70.jpg"
    cache = tmp_path / "c.db"
    all_tags = json.loads(
        invoke(
            "explain", [str(image), "--tags", str(vocab_file), "--threshold", "-1", "--json"], tiny_clip, cache
        ).output.splitlines()[-1]
    )
    best = all_tags["tags"][0]["score"]
    margin = 0.02
    near = json.loads(
        invoke(
            "explain",
            [str(image), "--tags", str(vocab_file), "--threshold", "-1", "--margin", str(margin), "--json"],
            tiny_clip,
            cache,
        ).output.splitlines()[-1]
    )
    expected = [t["tag"] for t in all_tags["tags"] if t["score"] >= best - margin - 1e-4]
    assert near["chosen"] == expected
    assert len(near["chosen"]) < len(all_tags["chosen"]) or len(expected) == 6


def test_bad_scoring_flags_are_usage_errors(tiny_clip, photo_dir, vocab_file, tmp_path):
    for flag, value in (("--margin", "-0.1"), ("--min-share", "1.5"), ("--temperature", "0")):
        result = invoke("tag", [str(photo_dir), "--tags", str(vocab_file), flag, value], tiny_clip, tmp_path / "c.db")
        assert result.exit_code == 2, (flag, result.output)
        assert flag in result.output


def _labelled_folder(photo_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "labelled"
    for label, name in (("dog", "Canon_40D.jpg"), ("car", "Nikon_D70.jpg"), ("dog", "Pentax_K10D.jpg")):
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo_dir / name, root / label / name)
    return root


def test_eval_single_label_folders_reports_top1_top5(tiny_clip, photo_dir, vocab_file, tmp_path):
    root = _labelled_folder(photo_dir, tmp_path)
    result = invoke(
        "eval",
        [str(root), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "1", "--json"],
        tiny_clip,
        tmp_path / "c.db",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["images"] == 3 and report["single_label"] is True
    # the same figures computed independently from `explain`'s ranking of each image
    ranks = []
    for label, name in (("dog", "Canon_40D.jpg"), ("car", "Nikon_D70.jpg"), ("dog", "Pentax_K10D.jpg")):
        ex = json.loads(
            invoke(
                "explain", [str(root / label / name), "--tags", str(vocab_file), "--json"], tiny_clip, tmp_path / "c.db"
            ).output.splitlines()[-1]
        )
        ranks.append(next(t["rank"] for t in ex["tags"] if t["tag"] == label))
    assert report["top1"] == pytest.approx(sum(r == 1 for r in ranks) / 3)
    assert report["top5"] == pytest.approx(sum(r <= 5 for r in ranks) / 3)
    # top-k 1 at threshold -1: exactly one prediction per image, so precision == recall == top-1
    assert report["precision"] == pytest.approx(report["top1"]) and report["recall"] == pytest.approx(report["top1"])


def test_calibrate_writes_a_vocabulary_that_loads_and_reaches_its_f1(tiny_clip, photo_dir, vocab_file, tmp_path):
    root = _labelled_folder(photo_dir, tmp_path)
    csv_path = root / "labels.csv"
    csv_path.write_text(
        "path,labels\ndog/Canon_40D.jpg,dog;food\ncar/Nikon_D70.jpg,car;food;zebra\ndog/Pentax_K10D.jpg,dog\n",
        encoding="utf-8",
    )
    out = tmp_path / "calibrated.txt"
    cache = tmp_path / "c.db"
    result = invoke(
        "calibrate",
        [str(root), "--labels", str(csv_path), "--tags", str(vocab_file), "-o", str(out), "--min-support", "2"],
        tiny_clip,
        cache,
    )
    assert result.exit_code == 0, result.output
    assert "2 tags calibrated" in result.output  # dog and food have 2 examples each; car has 1
    assert "@threshold=" in out.read_text()
    assert "labels that match no tag of the vocabulary: zebra (1 image)" in result.output  # names the label
    assert f"`rtagx eval --tags {out} --top-k 0` reproduces it" in result.output  # which F1 is promised
    # evaluated with its own thresholds, each calibrated tag reaches the F1 calibrate reported
    again = invoke(
        "eval", [str(root), "--labels", str(csv_path), "--tags", str(out), "--top-k", "0", "--json"], tiny_clip, cache
    )
    report = json.loads(again.output.strip().splitlines()[-1])
    per_tag = {t["keyword"]: t for t in report["per_tag"]}
    rows = [x for x in result.output.splitlines() if x.startswith("  ") and " threshold " in x]
    assert len(rows) == 2
    for line in rows:
        name, f1 = line.split()[0], float(line.split("F1")[1].split("->")[1].split()[0])
        assert per_tag[name]["f1"] == pytest.approx(f1, abs=1e-3)


def test_calibrate_warns_when_a_threshold_keeps_every_image(tiny_clip, photo_dir, vocab_file, tmp_path):
    root = _labelled_folder(photo_dir, tmp_path)
    csv_path = root / "labels.csv"
    csv_path.write_text(
        "path,labels\ndog/Canon_40D.jpg,food\ncar/Nikon_D70.jpg,food\ndog/Pentax_K10D.jpg,food\n", encoding="utf-8"
    )
    out = tmp_path / "calibrated.txt"
    result = invoke(
        "calibrate",
        [str(root), "--labels", str(csv_path), "--tags", str(vocab_file), "-o", str(out), "--min-support", "2"],
        tiny_clip,
        tmp_path / "c.db",
    )
    assert result.exit_code == 0, result.output
    assert "the best threshold keeps every labelled image for food" in result.output


def test_eval_and_calibrate_name_the_labelled_images_they_could_not_read(tiny_clip, photo_dir, vocab_file, tmp_path):
    # exit code 3 said "skipped", but calibrate said nothing about which photos and eval only counted them
    root = _labelled_folder(photo_dir, tmp_path)
    csv_path = root / "labels.csv"
    csv_path.write_text("dog/Canon_40D.jpg,dog\ndog/gone.jpg,dog\ncar/Nikon_D70.jpg,car\n", encoding="utf-8")
    cache = tmp_path / "c.db"
    for command, extra in (("eval", []), ("calibrate", ["-o", str(tmp_path / "out.txt")])):
        result = invoke(
            command, [str(root), "--labels", str(csv_path), "--tags", str(vocab_file), *extra], tiny_clip, cache
        )
        assert result.exit_code == 3, result.output
        assert "1 labelled image could not be read" in result.output and "gone.jpg" in result.output, command


def test_explain_on_a_non_image_points_to_a_command_that_writes_nothing(tiny_clip, vocab_file, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo", encoding="utf-8")
    result = invoke("explain", [str(notes), "--tags", str(vocab_file)], tiny_clip, tmp_path / "c.db")
    assert result.exit_code == 3, result.output
    assert f"{notes}: no vector: not an image" in result.output
    assert f"`rtagx tag --dry-run -v {notes}`" in result.output and "writes nothing" in result.output


def test_show_on_a_folder_says_it_takes_files(photo_dir, tmp_path):
    result = CliRunner().invoke(cli, ["show", str(photo_dir)], env={"RTAGX_CACHE": str(tmp_path / "c.db")})
    assert result.exit_code == 3, result.output
    assert f"{photo_dir}: a folder; show takes image files" in result.output
    assert "keywords: (none)" not in result.output


def _make_dng(path: Path, image: Image.Image) -> None:
    from test_decode_formats import make_dng

    make_dng(path, image)


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool reads back the sidecar")
def test_raw_with_jpeg_sibling_is_embedded_once_and_tagged_like_it(tiny_clip, vocab_file, tmp_path):
    pytest.importorskip("rawpy")
    folder = tmp_path / "shoot"
    folder.mkdir()
    picture = Image.effect_mandelbrot((256, 192), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    picture.save(folder / "IMG_0001.JPG", quality=92)
    _make_dng(folder / "IMG_0001.dng", picture)
    Image.effect_noise((200, 150), 60).convert("RGB").save(folder / "IMG_0002.jpg")
    result = invoke(
        "tag",
        [str(folder), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "3", "--json", "--yes"],
        tiny_clip,
        tmp_path / "c.db",
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    summary = lines[-1]
    assert summary["embedded"] == 2 and summary["reused"] == 1 and summary["written"] == 3
    by_name = {Path(x["path"]).name: x for x in lines[:-1]}
    assert by_name["IMG_0001.dng"]["tags"] == by_name["IMG_0001.JPG"]["tags"]
    sidecar = folder / "IMG_0001.dng.xmp"
    assert sidecar.exists()
    out = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Subject", str(sidecar)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)[0]["Subject"] == [t["tag"] for t in by_name["IMG_0001.JPG"]["tags"]]
    # a second run settles everything from the cache
    again = invoke(
        "tag",
        [str(folder), "--tags", str(vocab_file), "--threshold", "-1", "--top-k", "3", "--json", "--yes"],
        tiny_clip,
        tmp_path / "c.db",
    )
    assert json.loads(again.output.splitlines()[-1])["embedded"] == 0


def test_show_and_explain_json_carry_odd_names_as_valid_json(tiny_clip, samples_dir, vocab_file, tmp_path):
    """--json is for scripts: a name with a newline is the name (JSON escapes it), and bytes that are
    not UTF-8 become U+FFFD as in `tag --json`, never raw bytes a JSON reader rejects."""
    import os

    folder = tmp_path / "odd"
    folder.mkdir()
    latin1 = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", latin1)
    shutil.copy2(samples_dir / "jpg" / "Nikon_D70.jpg", folder / "two\nlines.jpg")
    cache = tmp_path / "cache.sqlite3"
    result = invoke("tag", [str(folder), "--tags", str(vocab_file), "--write", "none", "--yes", "-q"], tiny_clip, cache)
    assert result.exit_code == 0, result.output
    expected = {str(folder / "caf\ufffd.jpg"), str(folder / "two\nlines.jpg")}
    files = [os.fsdecode(latin1), str(folder / "two\nlines.jpg")]
    shown = CliRunner().invoke(cli, ["show", *files, "--json", "--cache", str(cache)])
    assert shown.exit_code == 0, shown.output
    assert {json.loads(line)["path"] for line in shown.stdout_bytes.decode("utf-8").splitlines()} == expected
    explained = invoke("explain", [*files, "--tags", str(vocab_file), "--json"], tiny_clip, cache)
    assert explained.exit_code == 0, explained.output
    assert {json.loads(line)["path"] for line in explained.stdout_bytes.decode("utf-8").splitlines()} == expected
