"""Shared fixtures: a tiny CLIP with fixed random weights, and copies of the real camera samples.

The tiny model goes through the exact path a user's model takes: an open_clip model config JSON
file passed as ``--model`` and a checkpoint file passed as ``--pretrained``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

# Never try the network from tests: the loading code must fail fast and clearly instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RTAGX_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
#: Real camera photos carried in the repository (tests/data/camera-samples/README.md: source, licence).
SAMPLES = Path(os.environ.get("RTAGX_SAMPLES") or REPO / "tests" / "data" / "camera-samples")

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``rtagx-tiny.json`` and a checkpoint with weights drawn from a fixed seed."""
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "rtagx-tiny.json"
    config.write_text(json.dumps(TINY_CONFIG, indent=2))
    torch.manual_seed(seed)
    model_cfg = json.loads(config.read_text())
    model = open_clip.model.CLIP(**model_cfg)
    checkpoint = directory / f"rtagx-tiny-seed{seed}.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(config JSON path, checkpoint path) of the tiny CLIP, built once per test session."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_clip_other(tmp_path_factory) -> tuple[Path, Path]:
    """A second tiny CLIP with other weights: a different model identity for the cache."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip-other"), seed=1)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"camera samples missing at {SAMPLES}: they are part of the repository")
    return SAMPLES


@pytest.fixture
def photo_dir(tmp_path, samples_dir) -> Path:
    """A writable copy of a handful of camera JPEGs (plus the corrupt one)."""
    dest = tmp_path / "photos"
    dest.mkdir()
    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Fujifilm_FinePix_E500.jpg", "Pentax_K10D.jpg", "corrupted.jpg"]
    for name in names:
        shutil.copy2(samples_dir / "jpg" / name, dest / name)
        os.chmod(dest / name, 0o644)
    return dest


@pytest.fixture(autouse=True)
def _eager_cpu_backend(request, monkeypatch) -> None:
    """The suite runs the image tower in eager torch, what it tests: ``--cpu-backend auto`` sees no
    OpenVINO. test_cpu_backends.py tests the backends themselves (module marker ``cpu_backends``)."""
    if request.node.get_closest_marker("cpu_backends") is None:
        from rtagx.model import encoder

        monkeypatch.setattr(encoder, "openvino_available", lambda: False)
