"""Scenario 5: metadata fuzzing. Arbitrary Unicode keywords written with rtagx.keywords.metadata.write_keywords
into a copy of a real camera JPEG, read back with exiftool: XMP dc:subject round-trips exactly, IPTC
holds each keyword cut at 64 bytes on a character boundary, or the list is refused as ``bad-keyword``
with the file untouched. Separators '/', ',', ';' are ordinary characters; '|' (rtagx's hierarchy
separator) and control characters must be refused.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import faultlib
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

keyword = st.one_of(
    st.text(min_size=1, max_size=80),
    st.text(alphabet=st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Z")), min_size=1, max_size=70),
    st.sampled_from(faultlib.EDGE_KEYWORDS),
    st.builds(lambda n, c: "x" * n + c, st.integers(55, 66), st.sampled_from(["é", "€", "😀", "a"])),
    st.builds(
        lambda a, sep, b: a + sep + b,
        st.text(min_size=1, max_size=8),
        st.sampled_from(["|", "/", ",", ";", "\t", "\n", "\x01", " / "]),
        st.text(min_size=1, max_size=8),
    ),
)

_WORK = Path(tempfile.mkdtemp(prefix="rtagx-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_WORK, ignore_errors=True)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)
@given(st.lists(keyword, min_size=1, max_size=5))
@example(["é" * 32, "x" * 63 + "é", "a/b", "a,b", "a;b"])
@example(["x" * 61 + "😀", "x" * 60 + "😀"])
@example(["a|b"])
@example(["ok", "a\x01b"])
@example(["1.50", "007", "TRUE"])
def test_keywords_round_trip_or_are_refused(keywords: list[str]) -> None:
    target = _WORK / "Canon_40D.jpg"
    shutil.copyfile(faultlib.SAMPLES / "jpg" / "Canon_40D.jpg", target)
    outcome, problems = faultlib.keyword_roundtrip(target, keywords)
    assert problems == [], (outcome, keywords)
