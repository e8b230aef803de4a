"""Trained taggers (WD14 v3 format) end to end: a tiny ONNX graph with the real input/output signature
and a selected_tags.csv with the real columns, built here with fixed random weights; real camera
photos; onnxruntime on the published reference preprocessing as the oracle; exiftool reads back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rtagx.cli.commands import cli

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tiny_taggers import WD14_TAGS, build_wd14, psnr, wd14_reference_input  # noqa: E402

SIZE = 64
GENERAL, CHARACTER = 0.35, 0.85  # the published WD14 defaults rtagx uses


@pytest.fixture(scope="module")
def wd14_dir(tmp_path_factory) -> Path:
    return build_wd14(tmp_path_factory.mktemp("wd14") / "tiny-wd14", size=SIZE)


def _photos(samples_dir: Path) -> list[Path]:
    return sorted(p for p in (samples_dir / "jpg").glob("*.jpg") if p.name != "corrupted.jpg")


def _reference_probabilities(model_dir: Path, path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": wd14_reference_input(path, SIZE)})[0][0]


def _expected_keywords(probs: np.ndarray, *, threshold: float = GENERAL, top_k: int | None = None) -> list[str]:
    """The keywords the reference gives: general tags >= threshold, characters >= 0.85, no ratings,
    underscores as spaces (kaomoji kept), best first; no cap unless top_k (as the reference app)."""
    picked = []
    for (name, category), p in zip(WD14_TAGS, probs):
        p16 = float(np.float16(p))  # the cache keeps float16, as for CLIP vectors
        if category == 9:
            continue
        cut = CHARACTER if category == 4 else threshold
        if p16 >= cut:
            picked.append((-p16, len(picked), name if name == "^_^" else name.replace("_", " ")))
    return [k for _, _, k in sorted(picked)][:top_k]


def _keywords(path: Path) -> list[str]:
    out = subprocess.run(["exiftool", "-j", "-IPTC:Keywords", str(path)], capture_output=True, text=True, check=True)
    value = json.loads(out.stdout)[0].get("Keywords", [])
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def test_input_tensor_and_probabilities_equal_the_reference(wd14_dir: Path, samples_dir: Path) -> None:
    from rtagx.imaging import decode
    from rtagx.model.encoder import load_encoder, resolve_model

    resolved = resolve_model(str(wd14_dir), None, offline=True)
    assert resolved.identity.kind == "wd14"
    assert resolved.identity.labels == tuple(n for n, _ in WD14_TAGS)
    encoder = load_encoder(resolved, device="cpu")
    spec = decode.PreprocessSpec.from_model(encoder.model)
    assert (spec.size, spec.fill_color, spec.pad_first) == (SIZE, 255, True)
    session = ort.InferenceSession(str(wd14_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    photos = _photos(samples_dir)
    assert len(photos) >= 10
    for path in photos:
        ours = decode.decode_for_model(path, spec)
        reference = wd14_reference_input(path, SIZE)
        # rtagx's tensor is BGR float 0-255 NHWC; stated bound: identical (max difference 0, PSNR inf)
        tensor = np.ascontiguousarray(ours[None, :, :, ::-1], dtype=np.float32)
        assert np.array_equal(tensor, reference), (path.name, psnr(tensor, reference))
        np.testing.assert_allclose(
            encoder.encode_arrays([ours])[0], session.run(None, {"input": reference})[0][0], rtol=0, atol=1e-6
        )


def test_tag_retag_untag_through_the_cli(wd14_dir: Path, photo_dir: Path, tmp_path: Path, samples_dir: Path) -> None:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool reads back the keywords")
    cache = tmp_path / "cache.sqlite3"
    runner = CliRunner()
    base = ["--model", str(wd14_dir), "--cache", str(cache)]
    result = runner.invoke(cli, ["tag", str(photo_dir), *base, "--yes", "--json"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # the corrupt sample is skipped
    photos = sorted(p for p in photo_dir.glob("*.jpg") if p.name != "corrupted.jpg")
    probs = {p.name: _reference_probabilities(wd14_dir, samples_dir / "jpg" / p.name) for p in photos}
    for p in photos:
        assert _keywords(p) == _expected_keywords(probs[p.name]), p.name

    # the cache keeps every probability: a new threshold re-decides without decoding
    result = runner.invoke(
        cli, ["retag", "--threshold", "0.6", "--cache", str(cache), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = [json.loads(line) for line in result.output.splitlines() if '"summary"' in line][-1]
    assert summary["embedded"] == 0
    for p in photos:
        assert _keywords(p) == _expected_keywords(probs[p.name], threshold=0.6), p.name

    # top-k caps; min-tags tops up with the best remaining tags, as for CLIP
    result = runner.invoke(cli, ["retag", "--top-k", "3", "--cache", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for p in photos:
        assert _keywords(p) == _expected_keywords(probs[p.name], threshold=0.6)[:3], p.name
    result = runner.invoke(
        cli,
        ["retag", "--threshold", "1", "--min-tags", "2", "--top-k", "0", "--cache", str(cache)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for p in photos:
        ranked = sorted(range(4, len(WD14_TAGS)), key=lambda i: (-float(np.float16(probs[p.name][i])), i))
        assert _keywords(p) == [WD14_TAGS[i][0].replace("_", " ") for i in ranked[:2]], p.name

    # --ratings adds the single most likely rating tag
    result = runner.invoke(cli, ["retag", "--ratings", "--top-k", "0", "--cache", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for p in photos:
        rating = ["general", "sensitive", "questionable", "explicit"][int(np.argmax(probs[p.name][:4]))]
        assert rating in _keywords(p)
        assert len({"general", "sensitive", "questionable", "explicit"} & set(_keywords(p))) == 1

    # show: the file's keywords and its cached probabilities through the tagger vocabulary
    result = runner.invoke(cli, ["show", str(photos[0]), "--cache", str(cache)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wd14 tags" in result.output and "0." in result.output

    result = runner.invoke(cli, ["untag", str(photo_dir), "--cache", str(cache)], catch_exceptions=False)
    assert result.exit_code in (0, 3), result.output
    for p in photos:
        assert _keywords(p) == []


def test_vocabulary_maps_model_tags_to_keywords(wd14_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool reads back the keywords")
    photo = photo_dir / "Nikon_D70.jpg"
    probs = _reference_probabilities(wd14_dir, photo)
    names = [n for n, _ in WD14_TAGS]
    # directives only: every model tag, with renames and a never-list
    top = [n for n in sorted(names[4:], key=lambda n: -probs[names.index(n)]) if WD14_TAGS[names.index(n)][1] == 0]
    renamed, never = top[0], top[1]
    directives = tmp_path / "renames.txt"
    directives.write_text(
        f"!tagger all\n!rename {renamed} => renamed tag\n!never {never}\n!threshold 0\n", encoding="utf-8"
    )
    cache = tmp_path / "cache.sqlite3"
    args = ["tag", str(photo), "--model", str(wd14_dir), "--cache", str(cache), "--yes", "--top-k", "0"]
    result = CliRunner().invoke(cli, [*args, "--tags", str(directives)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = _keywords(photo)
    assert "renamed tag" in got and renamed.replace("_", " ") not in got
    assert never.replace("_", " ") not in got
    characters = [n.replace("_", " ") for n, c in WD14_TAGS if c == 4 and probs[names.index(n)] < CHARACTER]
    assert not set(characters) & set(got)  # character tags keep their 0.85 under a file threshold of 0

    # tag lines pick model tags (underscores or spaces), with hierarchy and per-tag thresholds
    chosen = tmp_path / "chosen.txt"
    chosen.write_text(f"scene|{top[0]} @threshold=0\nthing|{top[1].replace('_', ' ')} @threshold=0.999999\n")
    result = CliRunner().invoke(cli, [*args, "--tags", str(chosen)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _keywords(photo) == [top[0]]

    unknown = tmp_path / "unknown.txt"
    unknown.write_text("no such tag\n", encoding="utf-8")
    result = CliRunner().invoke(cli, [*args, "--tags", str(unknown)])
    assert result.exit_code != 0 and "not among the model's" in result.output


def _hf_cache(monkeypatch, root: Path) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def test_hf_hub_tagger_from_the_hugging_face_cache(wd14_dir: Path, photo_dir: Path, tmp_path: Path, monkeypatch):
    """--model hf-hub:OWNER/REPO finds a WD14 tagger's files in the Hugging Face cache layout."""
    cache_root = _hf_cache(monkeypatch, tmp_path / "hf")
    repo = cache_root / "models--tester--tiny-wd14"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for name in ("model.onnx", "selected_tags.csv"):
        shutil.copy2(wd14_dir / name, snapshot / name)
    from rtagx.model.encoder import resolve_model

    by_hub = resolve_model("hf-hub:tester/tiny-wd14", None, offline=True).identity
    by_dir = resolve_model(str(wd14_dir), None, offline=True).identity
    assert by_hub.kind == "wd14" and by_hub.key == by_dir.key  # same files, same cache identity
    args = ["tag", str(photo_dir / "Canon_40D.jpg"), "--model", "hf-hub:tester/tiny-wd14", "--write", "none"]
    result = CliRunner().invoke(cli, [*args, "--cache", str(tmp_path / "c.sqlite3")], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_named_tagger_offline_says_what_to_fetch(tmp_path: Path, photo_dir: Path, monkeypatch) -> None:
    _hf_cache(monkeypatch, tmp_path / "empty-hf-cache")
    result = CliRunner().invoke(
        cli, ["tag", str(photo_dir), "--model", "wd-vit-tagger-v3", "--cache", str(tmp_path / "c.sqlite3"), "--yes"]
    )
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "huggingface-cli download SmilingWolf/wd-vit-tagger-v3 model.onnx selected_tags.csv" in lines[0]


def test_explain_eval_calibrate_and_doctor_on_tagger_outputs(wd14_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite3"
    base = ["--model", str(wd14_dir), "--cache", str(cache)]
    photo = photo_dir / "Nikon_D70.jpg"
    probs = _reference_probabilities(wd14_dir, photo)
    runner = CliRunner()
    result = runner.invoke(cli, ["explain", str(photo), *base, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    chosen = [t["tag"] if isinstance(t, dict) else t for t in shown.get("chosen", [])]
    assert chosen == _expected_keywords(probs), shown

    labelled = tmp_path / "labelled"
    for label, names in {"sky": ["Nikon_D70.jpg", "Pentax_K10D.jpg"], "night": ["Canon_40D.jpg"]}.items():
        (labelled / label).mkdir(parents=True)
        for name in names:
            shutil.copy2(photo_dir / name, labelled / label / name)
    result = runner.invoke(cli, ["eval", str(labelled), *base], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 labelled images" in result.output
    out = tmp_path / "calibrated.txt"
    result = runner.invoke(cli, ["calibrate", str(labelled), *base, "--output", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["eval", str(labelled), *base, "--tags", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output  # the calibrated file names the model's tags

    result = runner.invoke(cli, ["doctor", "--model", str(wd14_dir)])
    line = next(x for x in result.output.splitlines() if "wd14 tagger" in x)
    assert f"({len(WD14_TAGS)} tags)" in line and "onnxruntime" in line


def test_joytag_probabilities_equal_the_reference_and_tag_retag(photo_dir: Path, tmp_path: Path, samples_dir: Path):
    import torch
    from safetensors.torch import load_file
    from tiny_taggers import JOYTAG_CONFIG, JOYTAG_TAGS, build_joytag, joytag_reference_forward, joytag_reference_input

    from rtagx.imaging import decode
    from rtagx.model.encoder import load_encoder, resolve_model

    model_dir = build_joytag(tmp_path / "tiny-joytag")
    resolved = resolve_model(str(model_dir), None, offline=True)
    assert resolved.identity.kind == "joytag" and resolved.identity.labels == tuple(JOYTAG_TAGS)
    encoder = load_encoder(resolved, device="cpu")
    spec = decode.PreprocessSpec.from_model(encoder.model)
    state = load_file(str(model_dir / "model.safetensors"))
    cfg = dict(JOYTAG_CONFIG, n_tags=len(JOYTAG_TAGS))
    size = JOYTAG_CONFIG["image_size"]
    refs = {}
    for path in _photos(samples_dir):
        ours = decode.decode_for_model(path, spec)
        reference = joytag_reference_input(path, size)
        # stated bound: rtagx's normalized tensor equals the reference's to float rounding
        torch.testing.assert_close(decode.to_model_batch([ours], spec), reference, rtol=0, atol=1e-6)
        with torch.inference_mode():
            expected = joytag_reference_forward(state, cfg, reference)[0].numpy()
        np.testing.assert_allclose(encoder.encode_arrays([ours])[0], expected, rtol=0, atol=1e-5)
        refs[path.name] = expected

    cache = tmp_path / "cache.sqlite3"
    runner = CliRunner()
    args = ["--cache", str(cache)]
    result = runner.invoke(
        cli, ["tag", str(photo_dir), "--model", str(model_dir), *args, "--yes", "--threshold", "0.5"]
    )
    assert result.exit_code == 3, result.output
    if shutil.which("exiftool") is None:
        return
    for p in sorted(photo_dir.glob("*.jpg")):
        if p.name == "corrupted.jpg":
            continue
        probs = refs[p.name]
        order = sorted(
            (i for i in range(len(JOYTAG_TAGS)) if float(np.float16(probs[i])) >= 0.5),
            key=lambda i: (-float(np.float16(probs[i])), i),
        )
        want = [JOYTAG_TAGS[i] if JOYTAG_TAGS[i] == "^_^" else JOYTAG_TAGS[i].replace("_", " ") for i in order]
        assert _keywords(p) == want, p.name
    result = runner.invoke(cli, ["retag", "--threshold", "0.99", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert '"embedded": 0' in result.output


def test_sidecars_and_captions_as_for_clip(wd14_dir: Path, photo_dir: Path, tmp_path: Path, samples_dir: Path) -> None:
    photo = photo_dir / "Pentax_K10D.jpg"
    want = _expected_keywords(_reference_probabilities(wd14_dir, samples_dir / "jpg" / photo.name))
    before = photo.read_bytes()
    runner = CliRunner()
    base = ["--model", str(wd14_dir), "--cache", str(tmp_path / "c.sqlite3"), "--yes"]
    result = runner.invoke(cli, ["tag", str(photo), *base, "--write", "txt"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert photo.with_suffix(".txt").read_text(encoding="utf-8").strip() == ", ".join(want)
    result = runner.invoke(cli, ["tag", str(photo), *base, "--write", "sidecar"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "embedded 0" in result.output  # the probabilities came from the cache
    assert photo.read_bytes() == before  # sidecar only: the photo is untouched
    if shutil.which("exiftool") is not None:
        sidecar = next(p for p in photo_dir.iterdir() if p.suffix.lower() == ".xmp")
        assert _keywords_xmp(sidecar) == want


def _keywords_xmp(path: Path) -> list[str]:
    out = subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", str(path)], capture_output=True, text=True, check=True)
    value = json.loads(out.stdout)[0].get("Subject", [])
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def test_reference_input_for_alpha_palette_grey_cmyk_and_rotated_images(tmp_path: Path) -> None:
    """Alpha goes over white and EXIF orientation applies as in the reference, tiny images and
    panoramas too; the one stated
    difference is 16-bit images, which rtagx scales to 8 bits where Pillow's convert clips them."""
    from PIL import Image

    from rtagx.imaging import decode

    spec = decode.PreprocessSpec(
        size=SIZE, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="longest", fill_color=255, pad_first=True
    )
    rng = np.random.default_rng(0)
    rgb = (rng.random((90, 150, 3)) * 255).astype(np.uint8)
    alpha = (rng.random((90, 150)) * 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette-transparent.png", transparency=0)
    Image.fromarray(rgb).convert("LA").save(tmp_path / "grey-alpha.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).resize((1600, 960)).save(tmp_path / "rotated.jpg", exif=exif, quality=90)
    # smaller than the input (the reference resizes up) and extreme panoramas (mostly white padding)
    Image.fromarray(rgb[:1, :1]).save(tmp_path / "tiny-1x1.png")
    Image.fromarray(rgb[:3, :5]).save(tmp_path / "tiny-5x3.png")
    Image.fromarray(np.tile(rgb, (1, 40, 1))[:5]).save(tmp_path / "panorama-6000x5.png")
    Image.fromarray(np.tile(rgb, (40, 1, 1))[:, :3]).save(tmp_path / "panorama-3x3600.png")
    for path in sorted(tmp_path.iterdir()):
        ours = decode.decode_for_model(path, spec)
        tensor = np.ascontiguousarray(ours[None, :, :, ::-1], dtype=np.float32)
        assert np.array_equal(tensor, wd14_reference_input(path, SIZE)), path.name


@pytest.mark.parametrize(
    "variant",
    [
        {"batch": 1},  # older exports fix the batch at 1
        {"batch": 2},  # a fixed batch larger than 1: the last slice is padded
        {"nchw": True},
        {"float16": True},
        {"input_name": "input_1:0"},
    ],
    ids=["fixed-batch-1", "fixed-batch-2", "nchw", "float16", "input-name"],
)
def test_wd14_export_shapes_give_the_reference_probabilities(
    variant: dict, wd14_dir: Path, tmp_path: Path, samples_dir: Path
) -> None:
    """Each export shape of the same weights gives the reference's probabilities for a batch of 3
    real photos (float16: to its rounding); before, a fixed batch or float16 input failed in
    onnxruntime and an NCHW input was refused as "non-square 3x64"."""
    from rtagx.imaging import decode
    from rtagx.model.encoder import load_encoder, resolve_model

    model_dir = build_wd14(tmp_path / "variant", size=SIZE, **variant)
    encoder = load_encoder(resolve_model(str(model_dir), None, offline=True), device="cpu")
    spec = decode.PreprocessSpec.from_model(encoder.model)
    assert spec.size == SIZE
    photos = _photos(samples_dir)[:3]
    got = encoder.encode_arrays([decode.decode_for_model(p, spec) for p in photos])
    assert got.shape == (3, len(WD14_TAGS)) and got.dtype == np.float32
    want = np.stack([_reference_probabilities(wd14_dir, p) for p in photos])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 if variant.get("float16") else 1e-6)


def test_fixed_batch_tagger_through_the_cli(photo_dir: Path, tmp_path: Path) -> None:
    model_dir = build_wd14(tmp_path / "batch1", size=SIZE, batch=1)
    args = ["tag", str(photo_dir), "--model", str(model_dir), "--cache", str(tmp_path / "c.sqlite3")]
    result = CliRunner().invoke(cli, [*args, "--write", "none", "--yes", "--json"], catch_exceptions=False)
    assert result.exit_code == 3, result.output  # only the corrupt sample is skipped
    summary = [json.loads(line) for line in result.output.splitlines() if '"summary"' in line][-1]
    assert summary["embedded"] == 4, summary


def test_explicit_gpu_device_without_an_onnxruntime_provider_is_a_usage_error(
    wd14_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    """--device cuda with an onnxruntime that cannot run CUDA stops with one line and exit code 2,
    as for CLIP models, instead of quietly running the tagger on the CPU."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    args = ["tag", str(photo_dir), "--model", str(wd14_dir), "--device", "cuda", "--yes"]
    result = CliRunner().invoke(cli, [*args, "--cache", str(tmp_path / "c.sqlite3"), "--write", "none"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device cuda" in lines[0] and "onnxruntime-gpu" in lines[0], result.output


def test_label_categories_beyond_general_character_rating_are_not_default_keywords(tmp_path: Path) -> None:
    """A WD14-format label file with artist (1), copyright (3) and meta (5) tags, as some third-party
    taggers ship: the reference app reads only categories 0, 4 and 9, so those tags are no default
    keywords (before, they were written at the general threshold); a vocabulary can still name one."""
    tags = [*WD14_TAGS, ("some_artist", 1), ("touhou", 3), ("highres", 5)]
    model_dir = build_wd14(tmp_path / "categories", size=SIZE, tags=tags, seed=5)
    photo = Path(__file__).parent / "data" / "camera-samples" / "jpg" / "Nikon_D70.jpg"
    args = ["explain", str(photo), "--model", str(model_dir), "--cache", str(tmp_path / "c.sqlite3"), "--json"]
    runner = CliRunner()
    result = runner.invoke(cli, [*args, "--threshold", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    listed = {t["tag"] for t in shown["tags"]}
    assert not {"some artist", "touhou", "highres"} & listed, shown["chosen"]
    assert {"long hair", "sky", "^_^"} <= set(shown["chosen"])
    vocabulary = tmp_path / "meta.txt"
    vocabulary.write_text("highres @threshold=0\n", encoding="utf-8")
    result = runner.invoke(cli, [*args, "--tags", str(vocabulary)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    assert shown["chosen"] == ["highres"]
