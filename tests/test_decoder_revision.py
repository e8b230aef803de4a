"""A decoding fix reaches photos the cache already holds (schema 7: each vector records its decoder).

Vectors stored by an older decoder revision are checked from the file's header once: a file the
current decoder gives other pixels (a linear-light profile named sRGB, a PNG gAMA of 1.0, a 16-bit
min-is-white TIFF) is embedded again; the others keep their vectors and are marked current. A failure
remembered by an older revision (a JPEG with stray bytes between segments) is tried again.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ImageCms
from test_colour_descriptions import gama, write_png
from test_decode import camera_like
from test_decode_edge_cases import SRGB_PRIMARIES
from test_decode_fidelity import TiffPage, matrix_profile, write_tiff

from rtagx.cache.store import open_store
from rtagx.cli.commands import cli
from rtagx.imaging.decode import DECODER_REVISION, decoded_differently


def _tag(folder: Path, tiny_clip, cache: Path, expect: int = 0) -> tuple[dict, dict[str, dict]]:
    args = ["tag", str(folder), "--model", str(tiny_clip[0]), "--pretrained", str(tiny_clip[1])]
    args += ["--cache", str(cache), "--tags", str(folder.parent / "tags.txt"), "--yes", "--json", "--write", "none"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    objs = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    summary = next(o for o in objs if o.get("summary"))
    return summary, {Path(o["path"]).name: o for o in objs if not o.get("summary")}


def _photos(folder: Path) -> dict[str, bool]:
    """Files of each kind, with whether revision 2 decodes them differently from revision 1."""
    folder.mkdir()
    upright = camera_like(160, 120, seed=5)
    upright.save(folder / "plain.jpg", quality=90)
    upright.save(folder / "plain.png")
    write_png(folder / "linear-gamma.png", upright, gama(1.0))
    write_png(folder / "srgb-gamma.png", upright, gama(0.45455))
    icc = matrix_profile("sRGB linear", SRGB_PRIMARIES, 1.0)
    linear = ImageCms.profileToProfile(
        upright, ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc))
    )
    linear.save(folder / "linear-icc.png", icc_profile=icc)
    grey = 255 - np.asarray(upright.convert("L"))
    write_tiff(folder / "min-is-white.tif", [TiffPage(grey.astype(np.uint16) * 257, {262: (3, [0])})])
    write_tiff(folder / "min-is-white-8.tif", [TiffPage(grey, {262: (3, [0])})])
    return {
        "plain.jpg": False,
        "plain.png": False,
        "linear-gamma.png": True,
        "srgb-gamma.png": False,
        "linear-icc.png": True,
        "min-is-white.tif": True,
        "min-is-white-8.tif": False,
    }


def test_header_check_names_the_files_revision_2_changed(tmp_path):
    expected = _photos(tmp_path / "photos")
    assert {n: decoded_differently(tmp_path / "photos" / n, 1) for n in expected} == expected
    assert not any(decoded_differently(tmp_path / "photos" / n, DECODER_REVISION) for n in expected)


def test_vectors_of_an_older_decoder_are_embedded_again_only_where_pixels_changed(tmp_path, tiny_clip):
    folder, cache = tmp_path / "photos", tmp_path / "cache.sqlite3"
    expected = _photos(folder)
    (tmp_path / "tags.txt").write_text("dog\ncat\nbeach\n", encoding="utf-8")
    summary, _ = _tag(folder, tiny_clip, cache)
    assert summary["embedded"] == len(expected)
    with open_store(cache) as store:  # as a cache from before revision 2 left them
        (model,) = store.models()
        ids = [rec.content_id for rec in store.files_under(folder).values()]
        dim = store.vector_dim(model["id"]) or 0
        right = {cid: store.vectors(model["id"], [cid], dim)[0] for cid in ids}
        stale = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
        store.put_vectors(model["id"], ids, stale / np.linalg.norm(stale, axis=1, keepdims=True), decoder=1)
        old = {cid: store.vectors(model["id"], [cid], dim)[0] for cid in ids}

    summary, files = _tag(folder, tiny_clip, cache)
    again = sorted(n for n, f in files.items() if f.get("embedded"))
    assert again == sorted(n for n, changed in expected.items() if changed)
    with open_store(cache) as store:
        (model,) = store.models()
        recs = {Path(k.decode()).name: r.content_id for k, r in store.files_under(folder).items()}
        assert set(store.vector_decoders(model["id"], recs.values()).values()) == {DECODER_REVISION}
        for name, cid in recs.items():  # embedded again: the right vector; kept: the old one
            now = store.vectors(model["id"], [cid], dim)[0]
            assert np.array_equal(now, right[cid] if expected[name] else old[cid]), name
    summary, _ = _tag(folder, tiny_clip, cache)  # checked once: nothing more to do
    assert summary["embedded"] == 0


def test_a_failure_remembered_by_an_older_decoder_is_tried_again(tmp_path, tiny_clip):
    folder, cache = tmp_path / "photos", tmp_path / "cache.sqlite3"
    folder.mkdir()
    (tmp_path / "tags.txt").write_text("dog\ncat\n", encoding="utf-8")
    path = folder / "stray.jpg"
    buf = io.BytesIO()
    camera_like(96, 64, seed=6).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    at = data.index(b"\xff\xdb")
    path.write_bytes(data[:at] + b"\x00\x12" + data[at:])  # stray bytes: revision 1 failed it as corrupt
    st = path.stat()
    with open_store(cache) as store:
        store.put_failures([(path, st.st_size, st.st_mtime_ns, "corrupt", "JPEG marker expected")], decoder=1)
    summary, files = _tag(folder, tiny_clip, cache)
    assert summary["embedded"] == 1 and files["stray.jpg"].get("embedded")

    with open_store(cache) as store:  # a failure the current decoder made stays remembered
        store.put_failures([(path, st.st_size, st.st_mtime_ns, "corrupt", "x")], decoder=DECODER_REVISION)
    summary, files = _tag(folder, tiny_clip, cache, expect=3)  # 3: some files skipped
    assert summary["skipped"] == 1 and "remembered" in json.dumps(files["stray.jpg"])


def test_a_raw_file_following_its_sibling_follows_it_when_the_sibling_is_embedded_again(tmp_path, tiny_clip):
    """IMG_1.dng takes IMG_1.png's vector; when the PNG decodes differently now (gAMA 1.0), the shared
    content is stale whichever file the check meets first, and the RAW file takes the new vector."""
    pytest.importorskip("rawpy")
    from test_decode_formats import make_dng

    folder, cache = tmp_path / "photos", tmp_path / "cache.sqlite3"
    folder.mkdir()
    (tmp_path / "tags.txt").write_text("dog\ncat\nbeach\n", encoding="utf-8")
    write_png(folder / "IMG_1.png", camera_like(160, 120, seed=8), gama(1.0))
    make_dng(folder / "IMG_1.dng", camera_like(160, 120, seed=9))
    _tag(folder, tiny_clip, cache)
    with open_store(cache) as store:
        (model,) = store.models()
        recs = {Path(k.decode()).name: r.content_id for k, r in store.files_under(folder).items()}
        assert recs["IMG_1.dng"] == recs["IMG_1.png"]  # the RAW follows its sibling
        cid, dim = recs["IMG_1.png"], store.vector_dim(model["id"]) or 0
        right = store.vectors(model["id"], [cid], dim)[0]
        stale = np.ones((1, dim), dtype=np.float32) / np.sqrt(dim)
        store.put_vectors(model["id"], [cid], stale, decoder=1)

    _, files = _tag(folder, tiny_clip, cache)
    assert files["IMG_1.png"].get("embedded")
    with open_store(cache) as store:
        recs = {Path(k.decode()).name: r.content_id for k, r in store.files_under(folder).items()}
        assert recs["IMG_1.dng"] == recs["IMG_1.png"]
        assert np.array_equal(store.vectors(model["id"], [recs["IMG_1.dng"]], dim)[0], right)
    assert files["IMG_1.dng"]["tags"] == files["IMG_1.png"]["tags"]
