"""SigLIP-style models (sigmoid loss, a Hugging Face tokenizer): built from a tiny open_clip config
whose tokenizer is a small local tokenizer folder, so everything runs offline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtagx.cli.commands import cli

WORDS = ["<pad>", "<unk>", "</s>", "a", "photo", "of", "the", "dog", "cat", "car", "person", "pizza", "."]


def build_tiny_siglip(directory: Path, *, with_tokenizer: bool) -> tuple[Path, Path]:
    """A SigLIP-shaped open_clip model (custom text tower, no causal mask, logit bias) with fixed
    random weights; its ``hf_tokenizer_name`` is a local folder with a word-level tokenizer."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = directory / "tokenizer"
    if with_tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers

        tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer_dir.mkdir(exist_ok=True)
        tokenizer.save(str(tokenizer_dir / "tokenizer.json"))
        (tokenizer_dir / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "pad_token": "<pad>",
                    "unk_token": "<unk>",
                    "eos_token": "</s>",
                    "model_max_length": 16,
                }
            ),
            encoding="utf-8",
        )
    text_cfg = {
        "context_length": 16,
        "vocab_size": 64,
        "hf_tokenizer_name": str(tokenizer_dir),
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 64,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    }
    vision_cfg = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}
    config = directory / "rtagx-tiny-siglip.json"
    config.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "init_logit_bias": -10,
                "custom_text": True,
                "vision_cfg": vision_cfg,
                "text_cfg": text_cfg,
            }
        ),
        encoding="utf-8",
    )
    torch.manual_seed(0)
    model = open_clip.model.CustomTextCLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_bias=-10)
    checkpoint = directory / "rtagx-tiny-siglip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def _tag(config: Path, checkpoint: Path, folder: Path, cache: Path):
    return CliRunner().invoke(
        cli,
        [
            "tag",
            str(folder),
            "--model",
            str(config),
            "--pretrained",
            str(checkpoint),
            "--tags",
            "coco",
            "--top-k",
            "3",
            "--threshold",
            "0",
            "--json",
            "--cache",
            str(cache),
        ],
    )


def test_a_missing_tokenizer_package_is_one_clear_line(photo_dir, tmp_path, monkeypatch) -> None:
    """Without the siglip extra, open_clip's Hugging Face tokenizer cannot be imported: one error line
    that names the package and the extra to install, exit 1, no file touched."""
    config, checkpoint = build_tiny_siglip(tmp_path / "model", with_tokenizer=False)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without the extra
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    result = _tag(config, checkpoint, photo_dir, tmp_path / "c.db")
    assert result.exit_code == 1, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rtagx: error: model rtagx-tiny-siglip needs"), result.output
    assert "'transformers' is not installed" in lines[0] and "pip install 'rtagx[siglip]'" in lines[0]
    assert "internal error" not in result.output
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the siglip extra (transformers) is not installed"
)
def test_a_siglip_style_model_tags_with_probabilities(photo_dir, tmp_path) -> None:
    config, checkpoint = build_tiny_siglip(tmp_path / "model", with_tokenizer=True)
    result = _tag(config, checkpoint, photo_dir, tmp_path / "c.db")
    assert result.exit_code == 3, result.output  # corrupted.jpg is skipped
    files = [json.loads(x) for x in result.output.splitlines() if x.startswith("{") and '"summary"' not in x]
    tagged = [f for f in files if f["action"] != "skipped"]
    assert len(tagged) == 4
    for f in tagged:  # sigmoid scores: probabilities, not cosines
        assert all(0.0 <= t["score"] <= 1.0 for t in f["tags"])
    # retag loads only the text tower and agrees with tag
    again = CliRunner().invoke(cli, ["retag", str(photo_dir), "--json", "--cache", str(tmp_path / "c.db")])
    assert again.exit_code == 0, again.output
    retagged = [json.loads(x) for x in again.output.splitlines() if x.startswith("{") and '"summary"' not in x]
    assert {f["path"]: f["tags"] for f in retagged} == {f["path"]: f["tags"] for f in tagged}
