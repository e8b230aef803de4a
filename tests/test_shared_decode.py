"""Several models in one run decode each file once (issue 15 item 5): ``decode_for_models`` gives each
model the input its own decode gives, within the same fidelity bound (a tagger's exactly, a CLIP
model's >= 40 dB against open_clip's reference like test_decode_fidelity); a CLIP + WD14 run counts
one decode per file, each model embeds only what its cache lacks, and the vectors equal those of
single-model runs (the tagger's exactly, CLIP's within the decode bound). The config file's
``model = [...]`` list runs the same way; a bad entry names the key and the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_decode import OPENAI_MEAN, OPENAI_STD, psnr, reference_of_file
from test_decode_fidelity import MIN_PSNR_DB

from rtagx.cache.store import open_store, path_key
from rtagx.cli.commands import cli
from rtagx.imaging.decode import PreprocessSpec, decode_for_model, decode_for_models, to_model_batch
from rtagx.run.events import RunEvents
from rtagx.run.tag import run_tag
from rtagx.settings import Settings, load_settings

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tiny_taggers import build_wd14, wd14_reference_input

CLIP = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
SMALL_CLIP = PreprocessSpec(64, OPENAI_MEAN, OPENAI_STD)
WD14 = PreprocessSpec(448, (0.0,) * 3, (1.0,) * 3, resize_mode="longest", fill_color=255, pad_first=True)
JOYTAG = PreprocessSpec(448, OPENAI_MEAN, OPENAI_STD, resize_mode="longest", fill_color=255, pad_first=True)
SAMPLES = ["Canon_40D.jpg", "Nikon_D70.jpg", "Fujifilm_FinePix_E500.jpg", "Pentax_K10D.jpg"]


@pytest.fixture(scope="module")
def wd14_dir(tmp_path_factory) -> Path:
    return build_wd14(tmp_path_factory.mktemp("wd14") / "tiny-wd14", size=64)


@pytest.mark.parametrize("name", SAMPLES)
def test_one_decode_gives_each_model_its_own_input(samples_dir: Path, name: str) -> None:
    path = samples_dir / "jpg" / name
    clip, wd, joy = decode_for_models(path, [CLIP, WD14, JOYTAG])
    # the taggers: exactly their own decode, which is the published preprocessing
    assert np.array_equal(wd, decode_for_model(path, WD14))
    assert np.array_equal(joy, decode_for_model(path, JOYTAG))
    assert np.array_equal(wd[..., ::-1].astype(np.float32), wd14_reference_input(path, 448)[0])
    # CLIP from the full-resolution image: within the bound its own (draft) decode holds
    for spec, array in ((CLIP, clip), (SMALL_CLIP, decode_for_models(path, [SMALL_CLIP, WD14])[0])):
        db = psnr(to_model_batch([array], spec)[0], reference_of_file(path, spec), spec)
        assert db >= MIN_PSNR_DB, f"{name} at {spec.size}: {db:.1f} dB"
    # CLIP models alone share the draft of the largest; each stays within the bound
    big, small = decode_for_models(path, [CLIP, SMALL_CLIP])
    assert np.array_equal(big, decode_for_model(path, CLIP))
    db = psnr(to_model_batch([small], SMALL_CLIP)[0], reference_of_file(path, SMALL_CLIP), SMALL_CLIP)
    assert db >= MIN_PSNR_DB, f"{name} at 64 from the 224 draft: {db:.1f} dB"


def _vectors(cache: Path, folder: Path, kind: str) -> dict[str, np.ndarray]:
    """Each file's cached vector of the cache's model of ``kind`` (clip, wd14), by file name."""
    store = open_store(cache, readonly=True)
    try:
        (info,) = [m for m in store.models() if m.get("kind", "clip") == kind]
        files = store.files_under(folder)
        names = {Path(k.decode()).name: rec.content_id for k, rec in files.items()}
        ids = sorted(names.items())
        got = store.vectors(info["id"], [cid for _, cid in ids], store.vector_dim(info["id"]) or 0)
        return {n: got[i] for i, (n, _) in enumerate(ids)}
    finally:
        store.close()


def _settings(tmp_path: Path, model: str, pretrained: str, cache: str) -> Settings:
    """A run that writes nothing; CLIP scores a small vocabulary, a tagger alone its own tags."""
    settings = Settings(model=model, pretrained=pretrained, cache=str(tmp_path / cache), write="none")
    if pretrained:
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("dog\ncat\nmountain\nbeach\n", encoding="utf-8")
        settings.tags = str(vocab)
    return settings


def test_two_models_decode_each_file_once_and_embed_only_what_their_cache_lacks(
    tiny_clip, wd14_dir: Path, photo_dir: Path, tmp_path: Path
) -> None:
    cfg, ckpt = tiny_clip
    files = len(list(photo_dir.iterdir()))  # four photos and the corrupt sample
    photos = files - 1
    alone = {}
    for kind, model, weights in (("clip", str(cfg), str(ckpt)), ("wd", str(wd14_dir), "")):
        folder = shutil.copytree(photo_dir, tmp_path / kind)
        summary = run_tag([folder], _settings(tmp_path, model, weights, f"{kind}.sqlite3"))
        assert summary.decoded == files and summary.embedded == photos
        alone[kind] = folder

    stages: list[tuple[str, int]] = []
    events = RunEvents(on_stage=lambda name, total: stages.append((name, total)))
    settings = _settings(tmp_path, str(cfg), str(ckpt), "both.sqlite3")
    summary = run_tag([photo_dir], settings, events=events, extra_models=[(str(wd14_dir), "")])
    assert summary.decoded == files  # one decode per file for both models (the corrupt one fails once)
    assert summary.embedded == 2 * photos
    assert summary.skipped == 1 and summary.seen == files
    # a progress bar per model, and each model's encode time in the summary
    assert (f"embed:{cfg.name}", files) in stages and ("embed:tiny-wd14", files) in stages
    assert summary.timings[f"encode:{cfg.name}"] > 0 and summary.timings["encode:tiny-wd14"] > 0

    cache = tmp_path / "both.sqlite3"
    wd_both, wd_alone = _vectors(cache, photo_dir, "wd14"), _vectors(tmp_path / "wd.sqlite3", alone["wd"], "wd14")
    assert wd_both.keys() == wd_alone.keys() and len(wd_both) == photos
    for name in wd_both:
        assert np.array_equal(wd_both[name], wd_alone[name]), name  # the tagger's input is its own decode
    clip_both = _vectors(cache, photo_dir, "clip")
    clip_alone = _vectors(tmp_path / "clip.sqlite3", alone["clip"], "clip")
    for name in clip_both:
        a, b = clip_both[name].astype(np.float64), clip_alone[name].astype(np.float64)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.995, name

    # a folder CLIP has seen: only the tagger embeds, and only the files it lacks are decoded
    new = shutil.copytree(alone["clip"], tmp_path / "seen-by-clip")
    settings = _settings(tmp_path, str(cfg), str(ckpt), "clip.sqlite3")
    summary = run_tag([new], settings, extra_models=[(str(wd14_dir), "")])
    assert summary.embedded == photos and summary.decoded == files
    again = run_tag([new], settings, extra_models=[(str(wd14_dir), "")])
    assert again.embedded == 0 and again.decoded == 0


def test_config_file_names_several_models(tiny_clip, wd14_dir: Path, photo_dir: Path, tmp_path: Path) -> None:
    cfg, ckpt = tiny_clip
    config = tmp_path / "config.toml"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dog\ncat\n", encoding="utf-8")
    config.write_text(
        f"model = [{json.dumps(str(cfg))}, {json.dumps(str(wd14_dir))}]\n"
        f"pretrained = [{json.dumps(str(ckpt))}]\n"
        f"tags = {json.dumps(str(vocab))}\ncache = {json.dumps(str(tmp_path / 'c.sqlite3'))}\n",
        encoding="utf-8",
    )
    settings = load_settings(config_path=config)
    assert settings.model == str(cfg) and settings.pretrained == str(ckpt)
    assert settings.extra_models == ((str(wd14_dir), Settings.pretrained),)
    # a --model on the command line replaces the list
    assert load_settings({"model": "ViT-B-32"}, config_path=config).extra_models == ()

    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "tag", str(photo_dir), "--yes", "--json", "--write", "none"])
    assert result.exit_code == 3, result.output  # the corrupt sample is skipped
    summary = [json.loads(line) for line in result.output.splitlines() if '"summary"' in line][-1]
    assert summary["embedded"] == 8 and summary["decoded"] == 5
    assert {k for k in summary["timings"] if k.startswith("encode:")} == {f"encode:{cfg.name}", "encode:tiny-wd14"}

    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert f"{cfg},{wd14_dir}" in shown.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model = ["ViT-B-16", 3]',
            "'model' in config file {path}: bad entry 2 of the list, 3 (expected a model name)",
        ),
        ('model = ["ViT-B-16", " "]', "'model' in config file {path}: bad entry 2 of the list"),
        ("model = []", "'model' in config file {path}: an empty list"),
        ('model = ["ViT-B-16"]\npretrained = ["a", "b"]', "'pretrained' in config file {path}: more weights (2)"),
        ('model = ["ViT-B-16"]\npretrained = ["a", 1]', "'pretrained' in config file {path}: bad entry 2"),
    ],
)
def test_a_bad_model_list_names_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "tag", str(tmp_path), "--yes"])
    assert result.exit_code == 2, result.output
    assert message.format(path=config) in result.output


def test_decode_for_models_keys_the_same_paths(tmp_path: Path, samples_dir: Path) -> None:
    """A file named twice in one run is one path key: decoded once by the shared stage."""
    path = samples_dir / "jpg" / SAMPLES[0]
    assert path_key(path) == path_key(Path(str(path)))
    assert decode_for_models(path, []) == []


def test_watch_with_a_model_list_runs_the_first_and_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('model = ["ViT-B-16", "wd-vit-tagger-v3"]\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "watch", str(tmp_path / "missing"), "--yes"])
    assert (
        f"rtagx: watch runs one model, ViT-B-16 (the first of 'model' in config file {config}); "
        "the others (wd-vit-tagger-v3) run with `rtagx tag`" in result.output
    )
