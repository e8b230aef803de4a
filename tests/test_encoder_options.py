"""CPU speed options (bf16 weights, int8, channels-last) keep the vectors, and the overlapped
embed stage (background writer) keeps finished batches on Ctrl-C and reports writer errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtagx.errors import CacheError, UsageError
from rtagx.imaging import decode
from rtagx.model.encoder import cpu_has_native_bf16, load_encoder, resolve_model, resolve_precision


def _batch(encoder, n: int = 6, seed: int = 0):
    spec = decode.PreprocessSpec.from_model(encoder.model)
    rng = np.random.default_rng(seed)
    # smooth random images (not white noise): closer to what photos give the tower
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    arrays = [np.kron(a, np.ones((spec.size // 8, spec.size // 8, 1), dtype=np.uint8)) for a in small]
    return decode.to_model_batch(arrays, spec)


@pytest.fixture(scope="module")
def resolved(tiny_clip):
    cfg, ckpt = tiny_clip
    return resolve_model(str(cfg), str(ckpt))


@pytest.fixture(scope="module")
def reference(resolved):
    fp32 = load_encoder(resolved, device="cpu", precision="fp32")
    return fp32, fp32.encode_images(_batch(fp32))


def test_precision_choices() -> None:
    assert resolve_precision("auto", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", "cuda", cpu_bf16=True) == "fp16"
    assert resolve_precision("fp16", "cpu") == "bf16"
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(UsageError, match="int8"):
        resolve_precision("int8", "cuda")
    with pytest.raises(UsageError):
        resolve_precision("fp8", "cpu")


def test_cpu_bf16_detection_can_be_forced_by_the_setting(tmp_path) -> None:
    """RTAGX_CPU_BF16 is the cpu_bf16 setting (config key cpu-bf16), layered like every other one."""
    from rtagx.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text("cpu-bf16 = true\n", encoding="utf-8")
    assert load_settings(config_path=config, environ={}).cpu_bf16 is True
    off = load_settings(config_path=config, environ={"RTAGX_CPU_BF16": "0"})
    assert off.cpu_bf16 is False and off.sources["cpu_bf16"] == "env RTAGX_CPU_BF16"
    empty = tmp_path / "empty.toml"
    empty.write_text("", encoding="utf-8")
    assert load_settings(config_path=empty, environ={}).cpu_bf16 is None  # None: detect
    assert resolve_precision("auto", "cpu", cpu_bf16=off.cpu_bf16) == "fp32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_bf16_weights_match_fp32(resolved, reference) -> None:
    import torch

    _, ref = reference
    enc = load_encoder(resolved, device="cpu", precision="bf16")
    assert enc.precision == "bf16" and enc.input_dtype == torch.bfloat16
    assert next(enc.model.visual.parameters()).dtype == torch.bfloat16  # cast once, not autocast
    out = enc.encode_images(_batch(enc))
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert float((out * ref).sum(1).min()) >= 0.999
    texts = enc.encode_texts(["a photo of a dog.", "a cat"])
    fp32_texts = reference[0].encode_texts(["a photo of a dog.", "a cat"])
    assert float((texts * fp32_texts).sum(1).min()) >= 0.999


def test_bf16_text_only_tower_matches_bf16_full_model(resolved) -> None:
    full = load_encoder(resolved, device="cpu", precision="bf16")
    text = load_encoder(resolved, device="cpu", precision="bf16", text_only=True)
    prompts = ["a photo of a dog.", "mountain"]
    assert np.allclose(full.encode_texts(prompts), text.encode_texts(prompts), atol=1e-6)


def test_int8_is_close_to_fp32(resolved, reference) -> None:
    _, ref = reference
    enc = load_encoder(resolved, device="cpu", precision="int8")
    out = enc.encode_images(_batch(enc))
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert float((out * ref).sum(1).min()) >= 0.99
    # the text tower stays fp32: prompt vectors are exactly the fp32 ones
    prompts = ["a photo of a dog."]
    assert np.allclose(enc.encode_texts(prompts), reference[0].encode_texts(prompts), atol=1e-6)


def test_channels_last_is_equivalent(resolved, reference) -> None:
    _, ref = reference
    enc = load_encoder(resolved, device="cpu", precision="fp32", channels_last=True)
    assert enc.channels_last
    assert np.allclose(enc.encode_images(_batch(enc)), ref, atol=1e-5)


def test_default_workers_by_device() -> None:
    from rtagx.run.local import default_workers as _default_workers

    assert 1 <= _default_workers("cpu") <= 8
    assert 2 <= _default_workers("cuda") <= 32
    assert _default_workers("cuda") >= _default_workers("cpu")


# -- the overlapped embed stage ---------------------------------------------------------------------


def _settings(tiny_clip, tmp_path: Path, **kw):
    from rtagx.settings import load_settings

    cfg, ckpt = tiny_clip
    tags = tmp_path / "tags.txt"
    tags.write_text("dog\ncat\nmountain\nbeach\n", encoding="utf-8")
    return load_settings(
        {
            "cache": str(tmp_path / "cache.sqlite3"),
            "model": str(cfg),
            "pretrained": str(ckpt),
            "tags": str(tags),
            "threshold": -1.0,
            "top_k": 2,
            "write": "sidecar",
            **kw,
        },
        environ={},
    )


def _photos(tmp_path: Path, n: int) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.jpg")
    return folder


def _stored_vectors(cache: Path) -> int:
    from rtagx.cache.store import open_store

    with open_store(cache, readonly=True) as store:
        return int(store.conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])


def test_run_tag_writes_every_file_through_the_writer_thread(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    import threading

    from rtagx.run import tag as pipeline

    monkeypatch.setenv("RTAGX_CONFIG", str(tmp_path / "absent.toml"))
    folder = _photos(tmp_path, 7)
    settings = _settings(tiny_clip, tmp_path, batch_size=3)
    threads: set[str] = set()
    events = pipeline.RunEvents(on_file=lambda o: threads.add(threading.current_thread().name))
    summary = pipeline.run_tag([folder], settings, events=events)
    assert (summary.embedded, summary.written, summary.skipped) == (7, 7, 0)
    assert threads == {"rtagx-write"}  # one thread reports files while embedding
    assert _stored_vectors(settings.cache_path()) == 7
    assert len(list(folder.glob("*.xmp"))) == 7


def test_ctrl_c_keeps_finished_batches(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    from rtagx.model.encoder import Encoder
    from rtagx.run import tag as pipeline

    monkeypatch.setenv("RTAGX_CONFIG", str(tmp_path / "absent.toml"))
    folder = _photos(tmp_path, 6)
    settings = _settings(tiny_clip, tmp_path, batch_size=2)
    real = Encoder.encode_images
    calls = [0]

    def interrupted_on_third(self, batch):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(Encoder, "encode_images", interrupted_on_third)
    summary = pipeline.run_tag([folder], settings)
    assert summary.interrupted
    assert summary.embedded == 4 and summary.written == 4
    assert _stored_vectors(settings.cache_path()) == 4
    # the next run embeds only the rest
    monkeypatch.setattr(Encoder, "encode_images", real)
    again = pipeline.run_tag([folder], settings)
    assert again.embedded == 2 and not again.interrupted


def test_writer_error_stops_the_run_with_that_error(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    from rtagx.cache.store import Store
    from rtagx.run import tag as pipeline

    monkeypatch.setenv("RTAGX_CONFIG", str(tmp_path / "absent.toml"))
    folder = _photos(tmp_path, 5)
    settings = _settings(tiny_clip, tmp_path, batch_size=1)

    def broken(self, *a, **k):
        raise CacheError("disk full")

    monkeypatch.setattr(Store, "put_vectors", broken)
    with pytest.raises(CacheError, match="disk full"):
        pipeline.run_tag([folder], settings)


def test_cpu_encoder_keeps_its_activation_memory() -> None:
    """On Linux with glibc the malloc thresholds are set (the tower reuses its activation memory
    instead of faulting in fresh pages every call: ~1.4x eager bf16 on 2 cores, README)."""
    import platform
    import sys

    from rtagx.model.encoder import keep_activation_memory

    applied = keep_activation_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied
    else:
        assert applied in (True, False)
