"""The CPU executor's gate: closed while a batch encodes only when decoding is a small share of the
work, always reopened, and the GIL switch interval restored after a run."""

from __future__ import annotations

import sys
import threading

import pytest

from rtagx.run.local import EncodeGate


def _gate(decode_s: float, encode_s: float) -> EncodeGate:
    gate = EncodeGate(workers=2, batch_size=16, share=0.15)
    gate.decode_seconds, gate.decoded = decode_s * 32, 32  # per image
    gate.encode_seconds, gate.encoded = encode_s * 32, 32
    return gate


def test_gate_closes_for_cheap_decoding_and_stays_open_for_expensive() -> None:
    assert _gate(0.0014, 0.030).worth_closing()  # web JPEG: 1.4 ms against 30 ms
    assert not _gate(0.029, 0.030).worth_closing()  # 12-MP JPEG: serialising would add its whole time
    assert not EncodeGate(2, 16, 0.15).worth_closing()  # nothing measured yet: first batch overlaps
    assert not EncodeGate(2, 16, 0.0).worth_closing()  # share 0: never


def test_helpers_wait_while_closed_and_the_gate_reopens_on_error() -> None:
    gate = _gate(0.0014, 0.030)
    started = threading.Event()

    def helper() -> None:
        gate.wait()
        started.set()

    with pytest.raises(RuntimeError), gate.encoding(16):
        t = threading.Thread(target=helper)
        t.start()
        assert not started.wait(0.2)  # held while the batch encodes
        raise RuntimeError("encoder failed")
    t.join(timeout=5)
    assert started.is_set()  # reopened although the encode raised


def test_embed_restores_the_switch_interval(tiny_clip, tmp_path) -> None:
    from PIL import Image

    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    cfg, ckpt = tiny_clip
    for i in range(3):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(tmp_path / f"p{i}.jpg")
    tags = tmp_path / "tags.txt"
    tags.write_text("dog\ncat\n")
    before = sys.getswitchinterval()
    settings = load_settings(
        {
            "cache": str(tmp_path / "c.sqlite3"),
            "model": str(cfg),
            "pretrained": str(ckpt),
            "tags": str(tags),
            "device": "cpu",
            "write": "none",
            "offline": True,
        },
        environ={},
    )
    summary = run_tag([tmp_path], settings)
    assert summary.embedded == 3 and "wait-decode" in summary.timings
    assert sys.getswitchinterval() == before
