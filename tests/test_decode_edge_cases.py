"""Decoding cases found by attacking the decoder from outside: files every viewer shows one way that
rtagx fed the model another way (a linear-light profile named "sRGB", a 16-bit "min is white" TIFF)
or skipped (a JPEG with stray bytes between its segments).

Each file is authored here; the reference is open_clip's own preprocessing (``test_decode.reference``)
of the picture the file holds, as a colour-managed viewer shows it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from test_decode import OPENAI_MEAN, OPENAI_STD, camera_like, psnr, reference
from test_decode_fidelity import TiffPage, matrix_profile, write_tiff

from rtagx.imaging.decode import PreprocessSpec, decode_for_model, to_model_batch

SPEC = PreprocessSpec(96, OPENAI_MEAN, OPENAI_STD)
#: sRGB's primaries, D50-adapted as ICC colorants (rXYZ, gXYZ, bXYZ).
SRGB_PRIMARIES = (
    (0.4360747, 0.2225045, 0.0139322),
    (0.3850649, 0.7168786, 0.0971045),
    (0.1430804, 0.0606169, 0.7141733),
)


def mean_abs_diff(path: Path, upright: Image.Image, spec: PreprocessSpec = SPEC) -> float:
    """Mean absolute difference of the model input from the reference, in 0..1 pixel units."""
    import torch

    ours = to_model_batch([decode_for_model(path, spec)], spec)[0]
    std = torch.tensor(spec.std).view(3, 1, 1)
    return float(((ours - reference(upright.convert("RGB"), spec)) * std).abs().mean())


@pytest.mark.parametrize("name", ["sRGB linear", "sRGB-elle-V4-g10.icc", "Linear Rec709 (sRGB)"])
def test_linear_light_profile_named_srgb_is_converted(tmp_path, name):
    """A profile is sRGB by what it does, not by its name: these hold linear light (gamma 1.0).

    Before: the name contained "sRGB", the pixels went in as stored, far too dark (mean difference
    63.6/255, tiny-CLIP cosine 0.81)."""
    upright = camera_like(480, 320, seed=90)
    icc = matrix_profile(name, SRGB_PRIMARIES, 1.0)
    linear = ImageCms.profileToProfile(
        upright, ImageCms.createProfile("sRGB"), ImageCms.ImageCmsProfile(io.BytesIO(icc))
    )
    path = tmp_path / "linear.png"
    linear.save(path, icc_profile=icc)
    assert mean_abs_diff(path, upright) < 2 / 255  # 8-bit linear storage costs some shadow levels


def test_srgb_profile_under_any_name_leaves_pixels_as_stored(tmp_path):
    """A real sRGB curve on sRGB primaries is recognised whatever it is called: no transform, no change."""
    upright = camera_like(480, 320, seed=91)
    plain, tagged = tmp_path / "plain.png", tmp_path / "tagged.png"
    upright.save(plain)
    upright.save(tagged, icc_profile=matrix_profile("Camera RGB", SRGB_PRIMARIES, None))
    assert np.array_equal(decode_for_model(tagged, SPEC), decode_for_model(plain, SPEC))


def test_sixteen_bit_min_is_white_tiff_is_not_a_negative(tmp_path):
    """PhotometricInterpretation 0 at 16 bits: Pillow hands the stored values over uninverted.

    Before: a photographic negative (mean difference 43/255, cosine 0.94). 8-bit was right already."""
    upright = camera_like(480, 320, seed=92).convert("L")
    grey = np.asarray(upright)
    for bits, stored in ((8, 255 - grey), (16, (255 - grey).astype(np.uint16) * 257)):
        path = tmp_path / f"min-is-white-{bits}.tif"
        write_tiff(path, [TiffPage(stored, {262: (3, [0])})])
        assert (
            psnr(to_model_batch([decode_for_model(path, SPEC)], SPEC)[0], reference(upright.convert("RGB"), SPEC), SPEC)
            >= 40
        )


@pytest.mark.parametrize("before", [b"\xff\xdb", b"\xff\xc0", b"\xff\xda"])
@pytest.mark.parametrize("restarts", [False, True])
def test_jpeg_with_stray_bytes_between_segments_decodes(tmp_path, before, restarts):
    """libjpeg skips bytes between segments with a warning and decodes the whole picture; so must rtagx.

    Before: skipped as ``corrupt`` ("JPEG marker expected"), though Pillow and every viewer show it."""
    clean = tmp_path / "clean.jpg"
    camera_like(640, 480, seed=93).save(clean, quality=90, **({"restart_marker_blocks": 4} if restarts else {}))
    data = clean.read_bytes()
    at = data.index(before)
    stray = tmp_path / "stray.jpg"
    stray.write_bytes(data[:at] + b"\x00\x12\xff\x00" + data[at:])
    assert np.array_equal(decode_for_model(stray, SPEC), decode_for_model(clean, SPEC))
