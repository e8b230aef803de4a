"""CPU backends of the image tower (--cpu-backend): each one's vectors stay within cosine 0.9999 of
eager fp32 on real photos (why the cache may key vectors by model, not backend); a backend that is
missing or fails falls back to eager, and the run says so; the setting is layered like every other.

Speed is measured by bench/cpu_options.py --backends, never here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rtagx.errors import UsageError
from rtagx.imaging import decode
from rtagx.model import encoder as encoder_mod
from rtagx.model.encoder import load_encoder, resolve_cpu_backend, resolve_model
from rtagx.settings import load_settings

pytestmark = pytest.mark.cpu_backends  # conftest leaves OpenVINO visible to these tests

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.fixture(scope="module")
def resolved(tiny_clip):
    cfg, ckpt = tiny_clip
    return resolve_model(str(cfg), str(ckpt))


@pytest.fixture(scope="module")
def photos(resolved, samples_dir):
    """The camera samples decoded for the model, and their eager fp32 vectors."""
    fp32 = load_encoder(resolved, device="cpu", precision="fp32")
    spec = decode.PreprocessSpec.from_model(fp32.model)
    arrays = [
        decode.decode_for_model(p, spec)
        for p in sorted((samples_dir / "jpg").glob("*.jpg"))
        if p.name != "corrupted.jpg"
    ]
    batch = decode.to_model_batch(arrays[:8], spec)
    return batch, fp32.encode_images(batch)


def _prepared(resolved, backend: str, precision: str, batch, folder: Path | None, plan: int | None = None):
    enc = load_encoder(resolved, device="cpu", precision=precision, cpu_backend=backend, compile_dir=folder)
    if plan is not None:
        enc.plan(plan)
    first = enc.encode_images(batch)  # eager, and starts the preparation in the background
    assert enc.wait_backend(timeout=300) == backend, enc.backend_note
    return enc, first


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'rtagx[openvino]')")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace, which openvino's converter calls
def test_openvino_vectors_match_fp32_and_the_compiled_model_is_kept(resolved, photos, tmp_path) -> None:
    """bf16, what ``auto`` picks (``--precision fp32`` runs the same code with an f32 hint)."""
    batch, ref = photos
    precision = "bf16"
    enc, first = _prepared(resolved, "openvino", precision, batch, tmp_path)
    assert (first * ref).sum(-1).min() >= 0.9999  # the eager batch before the switch
    for part in (batch, batch[:3]):  # any batch size: the batch dimension is dynamic
        vecs = enc.encode_images(part)
        assert vecs.shape == (len(part), ref.shape[1]) and vecs.dtype == np.float32
        assert (vecs * ref[: len(part)]).sum(-1).min() >= 0.9999
    blobs = list(tmp_path.glob("openvino-*.blob"))
    assert len(blobs) == 1
    # a small job prepares nothing new (it would be over before the conversion), but loads a kept one
    small = load_encoder(
        resolved, device="cpu", precision=precision, cpu_backend="openvino", compile_dir=tmp_path / "new"
    )
    small.plan(len(batch))
    assert (small.encode_images(batch) * ref).sum(-1).min() >= 0.9999
    assert not small.backend_started and small.wait_backend() == "eager"
    again, _ = _prepared(resolved, "openvino", precision, batch, tmp_path, plan=len(batch))  # imported
    assert list(tmp_path.glob("openvino-*.blob")) == blobs
    assert np.allclose(again.encode_images(batch), enc.encode_images(batch), atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_COMPILER, reason="torch.compile (inductor) needs a C++ compiler")
def test_compiled_vectors_match_fp32(resolved, photos) -> None:
    """One tiny model, bf16; inductor's default cache folder, so a second test run skips most of it."""
    batch, ref = photos
    enc, _ = _prepared(resolved, "compile", "bf16", batch, None)
    assert (enc.encode_images(batch) * ref).sum(-1).min() >= 0.9999
    odd = enc.encode_images(batch[:3])  # another batch size runs eager (no recompile)
    assert (odd * ref[:3]).sum(-1).min() >= 0.9999


def test_auto_choice_and_what_cannot_run(monkeypatch) -> None:
    monkeypatch.setattr(encoder_mod, "openvino_available", lambda: True)
    assert resolve_cpu_backend("auto", "cpu", "bf16") == ("openvino", "")
    assert resolve_cpu_backend("auto", "cpu", "fp32") == ("eager", "")  # not measured faster: torch
    assert resolve_cpu_backend("auto", "cpu", "int8") == ("eager", "")
    assert resolve_cpu_backend("auto", "cuda", "fp16") == ("eager", "")
    assert resolve_cpu_backend("compile", "cpu", "fp32") == ("compile", "")
    backend, note = resolve_cpu_backend("openvino", "cpu", "int8")
    assert backend == "eager" and "int8" in note
    backend, note = resolve_cpu_backend("compile", "cuda", "fp16")
    assert backend == "eager" and "CPU only" in note
    monkeypatch.setattr(encoder_mod, "openvino_available", lambda: False)
    assert resolve_cpu_backend("auto", "cpu", "bf16") == ("eager", "")  # no error, no note: the default install
    backend, note = resolve_cpu_backend("openvino", "cpu", "bf16")
    assert backend == "eager" and "rtagx[openvino]" in note
    with pytest.raises(UsageError):
        resolve_cpu_backend("tensorrt", "cpu", "bf16")


def test_a_backend_that_fails_to_prepare_or_to_run_falls_back_to_eager(resolved, photos, monkeypatch) -> None:
    batch, ref = photos

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(encoder_mod, "_inductor_tower", broken)
    enc = load_encoder(resolved, device="cpu", precision="bf16", cpu_backend="compile")
    enc.encode_images(batch)
    assert enc.wait_backend(timeout=60) == "eager"
    assert "compile could not be prepared (RuntimeError: no C++ compiler found)" in enc.backend_note
    assert (enc.encode_images(batch) * ref).sum(-1).min() >= 0.9999

    enc = load_encoder(resolved, device="cpu", precision="fp32", cpu_backend="eager")
    enc.cpu_backend = enc.backend = "openvino"  # as if a ready backend broke mid-run
    enc._preparing = object()  # type: ignore[assignment]
    enc._fast = lambda x: (_ for _ in ()).throw(RuntimeError("device lost"))
    assert (enc.encode_images(batch) * ref).sum(-1).min() >= 0.9999
    assert enc.backend == "eager" and "failed while encoding (RuntimeError: device lost)" in enc.backend_note


def test_setting_config_env_and_option(tmp_path, monkeypatch, tiny_clip, samples_dir) -> None:
    config = tmp_path / "c.toml"
    config.write_text('cpu-backend = "openvino"\n', encoding="utf-8")
    assert load_settings(config_path=config, environ={}).cpu_backend == "openvino"
    env = load_settings(config_path=config, environ={"RTAGX_CPU_BACKEND": "compile"})
    assert env.cpu_backend == "compile" and env.sources["cpu_backend"] == "env RTAGX_CPU_BACKEND"
    from rtagx.settings import validate_settings

    with pytest.raises(UsageError, match="RTAGX_CPU_BACKEND: bad value 'fast'"):
        validate_settings(load_settings(config_path=config, environ={"RTAGX_CPU_BACKEND": "fast"}))

    from rtagx.cli.commands import cli

    monkeypatch.setattr(encoder_mod, "openvino_available", lambda: False)
    photos_dir = tmp_path / "photos"
    photos_dir.mkdir()
    shutil.copy2(samples_dir / "jpg" / "Canon_40D.jpg", photos_dir / "a.jpg")
    cfg, ckpt = tiny_clip
    args = ["tag", str(photos_dir), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(tmp_path / "c.db")]
    args += ["--precision", "bf16", "--cpu-backend", "openvino", "--write", "none", "--json", "--yes"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = next(json.loads(line) for line in result.output.splitlines() if '"summary": true' in line)
    assert summary["embedded"] == 1
    assert summary["encoder_backend"].startswith("eager (openvino is not installed")
    result = CliRunner().invoke(cli, [*args[:-2], "--cpu-backend", "turbo"])
    assert result.exit_code == 2 and "--cpu-backend" in result.output


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'rtagx[openvino]')")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("rows", [1, 2, 5, 16])
def test_openvino_streams_give_each_row_its_own_output_in_order(rows: int) -> None:
    """A batch split over two streams comes back whole and in order (one share per stream)."""
    import openvino as ov
    import torch

    from rtagx.model.encoder import _streamed

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    example = torch.randn(3, 8)
    model = ov.convert_model(net, example_input=example, input=[(-1, 8)])
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2}
    run = _streamed(ov.Core().compile_model(model, "CPU", config), streams=2)
    x = torch.randn(rows, 8)
    with torch.no_grad():
        expected = net(x).numpy()
    for _ in range(2):  # the same queue serves batch after batch
        np.testing.assert_allclose(run(x.numpy()), expected, rtol=1e-4, atol=1e-5)
