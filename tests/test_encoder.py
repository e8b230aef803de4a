"""Model resolution and loading through the real open_clip code path, on the tiny CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtagx.errors import ModelError, UsageError
from rtagx.model.encoder import load_encoder, resolve_device, resolve_model, resolve_precision


def test_identity_depends_on_weights_content_not_location(tiny_clip, tiny_clip_other, tmp_path: Path) -> None:
    cfg, ckpt = tiny_clip
    a = resolve_model(str(cfg), str(ckpt)).identity
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(ckpt.read_bytes())
    b = resolve_model(str(cfg), str(copy)).identity
    c = resolve_model(str(cfg), str(tiny_clip_other[1])).identity
    assert a.key == b.key and a.key != c.key
    assert a.image_size == 64 and a.checkpoint_hash


def test_text_only_tower_matches_full_model(tiny_clip) -> None:
    cfg, ckpt = tiny_clip
    resolved = resolve_model(str(cfg), str(ckpt))
    full = load_encoder(resolved, device="cpu")
    text = load_encoder(resolved, device="cpu", text_only=True)
    assert full.has_image_tower and not text.has_image_tower
    prompts = ["a photo of a dog.", "日本の写真", ""]
    a, b = full.encode_texts(prompts), text.encode_texts(prompts)
    assert a.shape == (3, 32)
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert text.logit_scale == pytest.approx(full.logit_scale, rel=1e-6)


def test_image_vectors_are_normalized(tiny_clip) -> None:
    import torch

    cfg, ckpt = tiny_clip
    enc = load_encoder(resolve_model(str(cfg), str(ckpt)), device="cpu")
    vecs = enc.encode_images(torch.randn(3, 3, 64, 64))
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_default_tag_is_built_with_quick_gelu_when_weights_exist(monkeypatch, tmp_path: Path) -> None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-16", "dfn2b")
    assert cfg.get("quick_gelu") is True  # why rtagx forces QuickGELU for the default weights


def test_broken_checkpoint_and_config_are_model_errors(tiny_clip, tmp_path: Path) -> None:
    cfg, _ = tiny_clip
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot load weights") as caught:
        load_encoder(resolve_model(str(cfg), str(junk)), device="cpu")
    # one line, and never torch's advice to load with weights_only=False (it would run pickled code)
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        resolve_model(str(bad_cfg), str(junk))
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "missing.json"), str(junk))


def test_devices_and_precisions() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError):
        resolve_device("tpu")
    assert resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"  # bf16 weights where the CPU has bf16 units
    assert resolve_precision("auto", "cuda") == "fp16"


@pytest.mark.parametrize("text_only", [False, True])
def test_prompts_encoded_over_their_own_length_match_the_full_context(tiny_clip, text_only: bool) -> None:
    """The trimmed forward (text_trim) gives the vectors of the full 77-token forward: a causal tower
    never lets a kept position see the padding that is cut off."""
    import torch

    from rtagx.model.text_trim import trimmed_text_forward

    cfg, ckpt = tiny_clip
    enc = load_encoder(resolve_model(str(cfg), str(ckpt)), device="cpu", precision="fp32", text_only=text_only)
    texts = ["a photo of a dog.", "a blurry photo of a very small red bicycle in the snow.", "cat"]
    tokens = enc.tokenizer(texts)
    with torch.inference_mode():
        full = enc.text_model(tokens)
        trimmed = trimmed_text_forward(enc.text_model, tokens)
    assert trimmed is not None
    assert tokens.argmax(dim=-1).max() + 1 < tokens.shape[1]  # something was cut off
    np.testing.assert_allclose(trimmed.numpy(), full.numpy(), rtol=1e-4, atol=1e-5)
    vectors = enc.encode_texts(texts)
    np.testing.assert_allclose(vectors, torch.nn.functional.normalize(full, dim=-1).numpy(), atol=1e-5)
