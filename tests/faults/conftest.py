"""Fixtures of the fault suite. The tiny CLIP (``tiny_clip``) and the camera samples come from
tests/conftest.py; everything runs the real ``python -m rtagx`` in subprocesses."""

from __future__ import annotations

import shutil

import faultlib
import pytest


@pytest.fixture(scope="session", autouse=True)
def _needs_exiftool_and_samples() -> None:
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is needed to read keywords back")
    if not faultlib.SAMPLES.is_dir():
        pytest.fail(f"camera samples missing at {faultlib.SAMPLES}: they are part of the repository")


@pytest.fixture
def model(tiny_clip):
    return tiny_clip
