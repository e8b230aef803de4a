"""A first run loads its model while it hashes the checkpoint (``run/tag.py: ModelPreload``): the
model it encodes with is the one loaded in the background, under the identity the real resolution
found; the vectors are those of a run that loads in turn; a run with nothing to embed waits for the
early load; a load that fails says so as before."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtagx.cache.store import open_store
from rtagx.errors import ModelError
from rtagx.model.encoder import digest_file
from rtagx.model.loaded import LoadedModels
from rtagx.run import tag as tag_mod
from rtagx.run.tag import run_tag
from rtagx.settings import load_settings


def _settings(tmp_path: Path, cfg: Path, ckpt: Path, cache: str) -> object:
    tags = tmp_path / "tags.txt"
    tags.write_text("dog\ncat\nsky\n")
    return load_settings(
        {
            "cache": str(tmp_path / cache),
            "model": str(cfg),
            "pretrained": str(ckpt),
            "tags": str(tags),
            "device": "cpu",
            "write": "none",
            "offline": True,
        },
        environ={},
    )


def _photos(folder: Path, n: int = 5) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(folder / f"p{i}.jpg", quality=90)
    return folder


def _vectors(cache: Path) -> tuple[str, np.ndarray]:
    store = open_store(cache)
    try:
        (key,) = [row[0] for row in store.conn.execute("SELECT key FROM models")]
        blobs = [row[0] for row in store.conn.execute("SELECT vector FROM vectors ORDER BY content_id")]
    finally:
        store.close()
    return key, np.stack([np.frombuffer(b, dtype=np.float16) for b in blobs])


def test_first_run_uses_the_preloaded_model_under_its_real_identity(tiny_clip, tmp_path, monkeypatch) -> None:
    cfg, ckpt = tiny_clip
    photos = _photos(tmp_path / "photos")
    loads: list[dict] = []
    real_load = tag_mod.load_encoder

    def counting_load(resolved, **options):
        loads.append({"thread": threading.current_thread().name, **options})
        return real_load(resolved, **options)

    monkeypatch.setattr(tag_mod, "load_encoder", counting_load)
    summary = run_tag([photos], _settings(tmp_path, cfg, ckpt, "a.sqlite3"))
    assert summary.embedded == 5
    assert len(loads) == 1 and loads[0]["thread"].startswith("rtagx-preload"), loads  # one load, early
    key, preloaded = _vectors(tmp_path / "a.sqlite3")
    assert f"sha:{digest_file(ckpt)}" in key  # the identity of the real resolution, not the locating one

    # the same run loading its model in turn (a kept model, as watch does, is never preloaded)
    loads.clear()
    summary = run_tag([photos], _settings(tmp_path, cfg, ckpt, "b.sqlite3"), models=LoadedModels())
    assert summary.embedded == 5 and not loads
    key_b, in_turn = _vectors(tmp_path / "b.sqlite3")
    assert key_b == key
    np.testing.assert_array_equal(preloaded, in_turn)
    assert not [t for t in threading.enumerate() if t.name.startswith("rtagx-preload")]


def test_nothing_to_embed_waits_for_the_early_load(tiny_clip, tmp_path) -> None:
    cfg, ckpt = tiny_clip
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = run_tag([empty], _settings(tmp_path, cfg, ckpt, "c.sqlite3"))
    assert summary.embedded == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("rtagx-preload")]


def test_a_damaged_checkpoint_fails_as_before(tiny_clip, tmp_path) -> None:
    cfg, _ = tiny_clip
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 100)
    photos = _photos(tmp_path / "photos")
    with pytest.raises(ModelError, match="cannot load weights"):
        run_tag([photos], _settings(tmp_path, cfg, bad, "d.sqlite3"))
    assert not [t for t in threading.enumerate() if t.name.startswith("rtagx-preload")]
