"""``bench/gpu.sh`` runs end to end in its CPU mode, so that the first GPU run does not fail on a typo.

The script's own small mode (``--cpu``: the tiny CLIP, 4 images per set, 12-MP set made smaller) runs
every step a GPU run takes: encoder-only batches, image generation, decode-only rates, torchvision's
JPEG decoder, ``rtagx tag`` end to end on each set, and the final table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_cpu_mode(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COUNT": "4",
        "LARGE_SIZE": "640x480",
        "WORKDIR": str(tmp_path / "work"),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
    }
    res = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu.sh"), "--cpu"], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "| set | measure | images/s |" in out
    for row in ("encoder only | batch 4", "12-MP | decode only", "web | rtagx tag, embed stage", "goal >= 80%"):
        assert row in out, out
    assert "4 embedded, 0 skipped" in out


def test_throughput_bench_tiny(tmp_path: Path) -> None:
    """``bench/throughput.py`` (the figures of README Performance) runs on the tiny CLIP and prints
    every row, including the per-round ratios against the encoder measured around each run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "bench" / "throughput.py"), "--model", "tiny", "--count-small", "20"]
    cmd += ["--count-large", "0", "--rounds", "1", "--workdir", str(tmp_path / "work")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "20 embedded, 20 written, 0 skipped" in out, out
    for row in (
        "naive baseline",
        "whole call / naive baseline of the same round",
        "steady state / warm encoder-only just before and after, per round",
        "core-time share: encode / (encode + decode + write)",
    ):
        assert row in out, out
