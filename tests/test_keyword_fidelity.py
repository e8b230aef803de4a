"""Metadata fidelity with exiftool as the independent judge.

Over every real camera sample and generated variants of each hard case (multi-picture JPEGs,
extended XMP, duplicate XMP packets, IPTC digests absent / matching / stale in JPEG and TIFF,
truncated IPTC keywords, Latin-1 IPTC, ``xml:lang`` items, EXIF XPKeywords, a flat ``AC|DC``, a
person's ``Dog``, sidecars of both styles):

- after a write, ``exiftool -use MWG -MWG:Keywords`` is the set before plus rtagx's;
- after untag, exiftool reads every tag as in the original (digest, toolkit and character-set
  declarations aside);
- embedded images (thumbnail, preview, MPF images) and pixels stay byte-identical;
- ``exiftool -validate`` reports no new warning.

One exiftool process (``-stay_open``) serves the whole module, and each check reads all files in
one call, so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rtagx.errors import MetadataError
from rtagx.keywords import iptc
from rtagx.keywords import jpeg_segments as jpeg
from rtagx.keywords.metadata import read_keywords, remove_own_keywords, write_keywords

EXIFTOOL = shutil.which("exiftool")
pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is the oracle of this suite")

OURS = ["dog", "beach", "café"]
OURS_HIER = ["animal|dog"]
# Tags that legitimately differ after tag + untag: the file itself, digests brought up to date, the
# UTF-8 declaration rtagx adds to IPTC, the XMP toolkit name, extended-XMP GUIDs.
UNTAG_IGNORES = {
    "Photoshop:IPTCDigest",
    "File:CurrentIPTCDigest",
    "IPTC:CodedCharacterSet",
    "IPTC:ApplicationRecordVersion",
    "XMP-x:XMPToolkit",
    "XMP-xmpNote:HasExtendedXMP",
}
UNTAG_IGNORED_GROUPS = ("File:", "System:", "ExifTool:", "Composite:")
LAYOUT = (":StripOffsets", ":TileOffsets", ":MPImageStart")  # where image data sits: layout, not content
EMBEDDED_IMAGES = ("-ThumbnailImage", "-PreviewImage", "-MPImage2", "-MPImage3")


class Exiftool:
    """One exiftool kept running (``-stay_open``): a call costs milliseconds, not a Perl start."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [EXIFTOOL, "-stay_open", "True", "-@", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def run(self, *args: str | Path) -> str:
        lines = [str(a) for a in args] + ["-execute"]
        assert all("\n" not in a for a in lines)
        self.proc.stdin.write(("\n".join(lines) + "\n").encode("utf-8"))
        self.proc.stdin.flush()
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line or line.startswith(b"{ready"):
                break
            out.append(line)
        return b"".join(out).decode("utf-8", "replace")

    def json(self, *args: str | Path) -> dict[str, dict]:
        text = self.run("-j", "-G1", "-a", "-struct", "-m", *args)
        return {d["SourceFile"]: d for d in json.loads(text)} if text.strip() else {}

    def write(self, path: Path, *args: str) -> None:
        out = self.run("-overwrite_original", "-m", *args, path)
        assert "1 image files updated" in out, out

    def close(self) -> None:
        self.proc.stdin.write(b"-stay_open\nFalse\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def et():
    tool = Exiftool()
    yield tool
    tool.close()


def as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def mwg_keywords(et: Exiftool, files: list[Path]) -> dict[Path, list[str]]:
    data = et.json("-use", "MWG", "-MWG:Keywords", *files)
    return {f: as_list(data[str(f)].get("MWG:Keywords")) for f in files}


def warnings_of(et: Exiftool, files: list[Path]) -> dict[Path, set[str]]:
    """Every warning of ``exiftool -validate`` per file (text output: JSON keeps only one)."""
    out: dict[Path, set[str]] = {f: set() for f in files}
    by_name = {str(f): f for f in files}
    current = files[0] if len(files) == 1 else None
    for line in et.run("-validate", "-warning", "-a", "-s", "-m", *files).splitlines():
        if line.startswith("======== "):
            current = by_name.get(line[9:])
        elif current is not None and line.startswith("Warning") and ":" in line:
            out[current].add(line.split(":", 1)[1].strip())
    return out


def embedded_images(et: Exiftool, files: list[Path]) -> dict[Path, dict]:
    data = et.json("-b", *EMBEDDED_IMAGES, *files)
    return {f: {k: v for k, v in data[str(f)].items() if k != "SourceFile"} for f in files}


def all_tags(et: Exiftool, files: list[Path]) -> dict[Path, dict]:
    data = et.json("-n", *files)
    return {
        f: {
            k: v
            for k, v in data[str(f)].items()
            if k not in UNTAG_IGNORES
            and not k.startswith(UNTAG_IGNORED_GROUPS)
            and not k.endswith(LAYOUT)
            and k != "SourceFile"
        }
        for f in files
    }


def pixels_of(path: Path) -> bytes:
    """The image data: a JPEG's scan segments byte for byte, else the decoded pixels."""
    data = path.read_bytes()
    if data.startswith(b"\xff\xd8"):
        return jpeg.parse(data).tail
    with Image.open(path) as im:
        return np.asarray(im).tobytes()


def iptc_naa_md5(et: Exiftool, path: Path) -> str:
    raw = subprocess.run([EXIFTOOL, "-b", "-IPTC-NAA", str(path)], capture_output=True, check=True).stdout
    return hashlib.md5(raw).hexdigest()


# ------------------------------------------------------------------ the cases


def _copy(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)
    return dest


def _mpo(path: Path) -> Path:
    rng = np.random.RandomState(3)
    a = Image.fromarray((rng.rand(96, 128, 3) * 255).astype("uint8"))
    b = Image.fromarray((rng.rand(48, 64, 3) * 255).astype("uint8"))
    a.save(path, format="MPO", save_all=True, append_images=[b])
    return path


def _with_packet(path: Path, packet: bytes, *, twice: bytes | None = None) -> Path:
    """Put an XMP packet into a JPEG by hand (and a second standard packet, as broken tools do)."""
    parts = jpeg.splice(jpeg.parse(path.read_bytes()), xmp_packet=packet)
    if twice is not None:
        idx = next(k for k, s in enumerate(parts.segments) if s.is_xmp())
        parts.segments.insert(idx + 1, jpeg.make_segment(0xE1, jpeg.XMP_HEADER + twice))
    path.write_bytes(parts.to_bytes())
    return path


def _subject_packet(items: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


def _with_app13(path: Path, datasets: list[iptc.Dataset]) -> Path:
    res = [iptc.Resource(b"8BIM", iptc.IPTC_RESOURCE, b"\x00", iptc.build_iim(datasets))]
    path.write_bytes(jpeg.splice(jpeg.parse(path.read_bytes()), irb=iptc.build_irb(res)).to_bytes())
    return path


LONG = ("a person's very long keyword " * 11).strip()  # 318 bytes: IPTC keeps its first 64
STALE = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def originals(tmp_path_factory, samples_dir, et) -> dict[str, Path]:
    """Every real camera JPEG and TIFF, and the generated hard cases, by name."""
    out = tmp_path_factory.mktemp("originals")
    cases: dict[str, Path] = {}
    for k, src in enumerate(sorted((samples_dir / "jpg").rglob("*.jpg"))):
        cases[f"cam{k:02d}"] = _copy(src, out / f"cam{k:02d}_{src.name}")
    for src in sorted((samples_dir / "tiff").glob("*.tiff")):
        cases[src.stem] = _copy(src, out / src.name)
    base = samples_dir / "jpg" / "Canon_40D.jpg"
    tiff = samples_dir / "tiff" / "BSG1.tiff"

    def variant(name: str, src: Path = base) -> Path:
        cases[name] = _copy(src, out / name)
        return cases[name]

    cases["mpf.jpg"] = _mpo(out / "mpf.jpg")
    et.write(_mpo(out / "mpf-kw.jpg"), "-IPTC:Keywords=person", "-XMP-dc:Subject=person")
    cases["mpf-kw.jpg"] = out / "mpf-kw.jpg"
    many = [f"-XMP-dc:Subject=person keyword {i:03d} " + "x" * 60 for i in range(900)]
    et.write(variant("extended.jpg"), *many)  # > 64 KB of XMP: exiftool moves dc:subject to extended XMP
    et.write(variant("dup-xmp.jpg", out / "mpf.jpg"), "-XMP-dc:Subject=first")
    first = jpeg.parse(cases["dup-xmp.jpg"].read_bytes()).xmp_packet()
    _with_packet(cases["dup-xmp.jpg"], first, twice=_subject_packet("<rdf:li>second</rdf:li>"))
    for kind, src in (("jpg", base), ("tiff", tiff)):
        both = ["-IPTC:Keywords=person", "-XMP-dc:Subject=person", "-XMP-dc:Subject=Dog"]
        et.write(variant(f"digest-absent.{kind}", src), *both, "-IPTC:Keywords=Dog", "-IPTCDigest=")
        f = variant(f"digest-match.{kind}", src)
        et.write(f, *both, "-IPTC:Keywords=Dog")
        et.write(f, f"-IPTCDigest={iptc_naa_md5(et, f)}" if kind == "tiff" else "-IPTCDigest=new")
        et.write(variant(f"digest-stale.{kind}", src), *both, "-IPTC:Keywords=iptc-only", f"-IPTCDigest={STALE}")
    et.write(variant("truncated.jpg"), f"-XMP-dc:Subject={LONG}", "-XMP-dc:Subject=short")
    iim = [iptc.Dataset(2, 25, LONG.encode()[:64]), iptc.Dataset(2, 25, b"short")]
    _with_app13(cases["truncated.jpg"], iim)
    et.write(cases["truncated.jpg"], f"-IPTCDigest={STALE}")
    _with_app13(variant("latin1.jpg"), [iptc.Dataset(2, 25, "café".encode("latin-1"))])
    lang = '<rdf:li xml:lang="fr">chat</rdf:li><rdf:li>plain</rdf:li>'
    _with_packet(variant("xml-lang.jpg", samples_dir / "jpg" / "Nikon_D70.jpg"), _subject_packet(lang))
    et.write(variant("xp.jpg"), "-XPKeywords=person;Paris", "-XMP-dc:Subject=person", "-XMP-dc:Subject=Paris")
    et.write(variant("xp.tiff", tiff), "-XPKeywords=person;Paris")
    et.write(variant("pipe.jpg"), "-XMP-dc:Subject=AC|DC", "-IPTC:Keywords=AC|DC")
    return cases


def test_the_hard_cases_are_what_they_claim(et, originals):
    """Guard the generators: each case really has the structure it is named for."""
    segs = jpeg.parse(originals["extended.jpg"].read_bytes()).segments
    assert sum(s.is_xmp_extension() for s in segs) >= 2
    assert sum(s.is_xmp() for s in jpeg.parse(originals["dup-xmp.jpg"].read_bytes()).segments) == 2
    warned = warnings_of(et, [originals["digest-stale.jpg"], originals["digest-stale.tiff"]])
    assert all(any("IPTCDigest is not current" in w for w in ws) for ws in warned.values())
    matched = warnings_of(et, [originals["digest-match.jpg"], originals["digest-match.tiff"]])
    assert not any("IPTCDigest" in w for ws in matched.values() for w in ws)
    assert mwg_keywords(et, [originals["truncated.jpg"]])[originals["truncated.jpg"]] == [LONG, "short"]
    assert embedded_images(et, [originals["mpf.jpg"]])[originals["mpf.jpg"]].get("MPImage2:MPImage2")


# ------------------------------------------------------------------ tag, then untag


SKIPPED = {"dup-xmp.jpg": "duplicate-xmp"}
# A stale digest means XMP and IPTC disagree; the first write reconciles them the MWG way (what
# MWG:Keywords shows is kept), so the raw fields differ from the original's afterwards.
RECONCILED = {"digest-stale.jpg", "digest-stale.tiff", "truncated.jpg"}


def test_tag_and_untag_keep_everything_exiftool_sees(et, originals, tmp_path):
    names = sorted(originals)
    files = {n: _copy(originals[n], tmp_path / originals[n].name) for n in names}
    paths = [files[n] for n in names]
    mwg_before = mwg_keywords(et, paths)
    images_before = embedded_images(et, paths)
    warnings_before = warnings_of(et, paths)
    tags_before = all_tags(et, paths)
    pixels_before = {p: pixels_of(p) for p in paths}
    bytes_before = {p: p.read_bytes() for p in paths}

    for n in names:
        if n in SKIPPED:
            with pytest.raises(MetadataError) as e:
                write_keywords(files[n], OURS, hierarchical=OURS_HIER)
            assert e.value.reason == SKIPPED[n]
        else:
            write_keywords(files[n], OURS, hierarchical=OURS_HIER)

    mwg_after = mwg_keywords(et, paths)
    images_after = embedded_images(et, paths)
    warnings_after = warnings_of(et, paths)
    for n, p in files.items():
        if n in SKIPPED:
            assert p.read_bytes() == bytes_before[p], n
            continue
        before = mwg_before[p]
        folded = {k.casefold() for k in before}
        expected = before + [k for k in OURS if k.casefold() not in folded]
        assert mwg_after[p] == expected, n
        assert images_after[p] == images_before[p], n
        assert pixels_of(p) == pixels_before[p], n
        assert not warnings_after[p] - warnings_before[p], (n, warnings_after[p] - warnings_before[p])
        assert not any("IPTCDigest" in w for w in warnings_after[p]), n  # digests made current
        assert read_keywords(p).keywords == expected, n

    for n in names:
        if n not in SKIPPED:
            assert remove_own_keywords(files[n]).changed, n
    tags_after = all_tags(et, paths)
    images_untagged = embedded_images(et, paths)
    mwg_untagged = mwg_keywords(et, paths)
    for n, p in files.items():
        assert mwg_untagged[p] == mwg_before[p], n
        if n in RECONCILED:
            for t in (tags_before[p], tags_after[p]):
                t.pop("XMP-dc:Subject", None), t.pop("IPTC:Keywords", None)
        assert tags_after[p] == tags_before[p], (p.name, _diff(tags_before[p], tags_after[p]))
        assert images_untagged[p] == images_before[p], p.name
        assert pixels_of(p) == pixels_before[p], p.name


def _diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def test_item_specifics_xml_lang_hierarchy_and_case(et, originals, tmp_path):
    """The qualifier of a kept item stays; a flat 'AC|DC' becomes no hierarchy; 'Dog' covers 'dog'."""
    lang = _copy(originals["xml-lang.jpg"], tmp_path / "lang.jpg")
    pipe = _copy(originals["pipe.jpg"], tmp_path / "pipe.jpg")
    case = _copy(originals["digest-match.jpg"], tmp_path / "case.jpg")
    for f in (lang, pipe, case):
        write_keywords(f, ["dog"])
    assert b'xml:lang="fr">chat</rdf:li>' in jpeg.parse(lang.read_bytes()).xmp_packet()
    data = et.json("-XMP-lr:HierarchicalSubject", "-XMP-dc:Subject", pipe, case)
    assert "XMP-lr:HierarchicalSubject" not in data[str(pipe)]
    assert as_list(data[str(case)]["XMP-dc:Subject"]) == ["person", "Dog"]


def test_a_long_keyword_survives_a_stale_digest(et, originals, tmp_path):
    f = _copy(originals["truncated.jpg"], tmp_path / "t.jpg")
    write_keywords(f, ["dog"])
    data = et.json("-XMP-dc:Subject", "-IPTC:Keywords", f)[str(f)]
    assert as_list(data["XMP-dc:Subject"]) == [LONG, "short", "dog"]
    assert as_list(data["IPTC:Keywords"]) == [LONG[:64], "short", "dog"]


# ------------------------------------------------------------------ multi-picture files


def test_mpf_second_image_survives_and_an_earlier_break_is_repaired(et, originals, tmp_path):
    f = _copy(originals["mpf.jpg"], tmp_path / "mpf.jpg")
    second = embedded_images(et, [f])[f]["MPImage2:MPImage2"]
    write_keywords(f, ["dog"], hierarchical=["animal|dog"])
    assert embedded_images(et, [f])[f]["MPImage2:MPImage2"] == second
    # A file an earlier writer damaged: a segment slipped in after the MPF header, offsets not moved.
    parts = jpeg.parse(f.read_bytes())
    idx = next(k for k, s in enumerate(parts.segments) if s.is_mpf())
    parts.segments.insert(idx + 1, jpeg.make_segment(0xEF, b"some other tool" * 50))
    f.write_bytes(parts.to_bytes())
    assert embedded_images(et, [f])[f].get("MPImage2:MPImage2") != second
    assert remove_own_keywords(f).changed
    assert embedded_images(et, [f])[f]["MPImage2:MPImage2"] == second
    assert not warnings_of(et, [f])[f]


# ------------------------------------------------------------------ sidecars


SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
   xmp:Rating="3" crs:Exposure2012="+0.35">
   <dc:subject><rdf:Bag><rdf:li>person</rdf:li><rdf:li xml:lang="fr">chat</rdf:li></rdf:Bag></dc:subject>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Title</rdf:li><rdf:li xml:lang="fr">Titre</rdf:li></rdf:Alt></dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.mark.parametrize("style", ["ext", "stem"])
def test_existing_sidecars_of_both_styles_round_trip(et, samples_dir, tmp_path, style):
    photo = _copy(samples_dir / "heic" / "samplefilehub.heif", tmp_path / "IMG_1.heif")
    side = tmp_path / ("IMG_1.heif.xmp" if style == "ext" else "IMG_1.xmp")
    side.write_text(SIDECAR, encoding="utf-8")
    photo_bytes = photo.read_bytes()
    before = all_tags(et, [side])[side]
    mwg = mwg_keywords(et, [side])[side]
    r = write_keywords(photo, OURS, sidecar_style=style)
    assert r.written_to == side and photo.read_bytes() == photo_bytes
    assert mwg_keywords(et, [side])[side] == mwg + OURS
    assert not warnings_of(et, [side])[side]
    assert remove_own_keywords(photo, sidecar_style=style).changed
    assert all_tags(et, [side])[side] == before


def test_a_new_sidecar_carries_the_jpegs_keywords_in(et, originals, tmp_path):
    f = _copy(originals["digest-match.jpg"], tmp_path / "p.jpg")
    write_keywords(f, ["dog", "beach"], target="sidecar")
    side = tmp_path / "p.jpg.xmp"
    assert mwg_keywords(et, [side])[side] == ["person", "Dog", "beach"]
    assert read_keywords(f, target="sidecar").owned == ["beach"]
    remove_own_keywords(f, target="sidecar")
    assert mwg_keywords(et, [side])[side] == ["person", "Dog"]


# ------------------------------------------------------------------ the 64-byte IPTC edge


_CHARS = st.sampled_from(["a", "é", "日", "\U0001f600"])
_EDGE = st.builds(  # a prefix, then one character repeated up to 56..72 bytes: cuts land in every place
    lambda prefix, ch, size: prefix + ch * ((size - len(prefix)) // len(ch.encode())),
    st.sampled_from(["", "x", "yz "]),
    _CHARS,
    st.integers(56, 72),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(_EDGE, min_size=1, max_size=4))
def test_keywords_around_the_64_byte_iptc_edge(et, originals, tmp_path, words):
    f = _copy(originals["cam00"], tmp_path / "edge.jpg")
    write_keywords(f, words)
    expected = list(dict.fromkeys(words))
    data = et.json("-XMP-dc:Subject", "-IPTC:Keywords", "-use", "MWG", "-MWG:Keywords", f)[str(f)]
    assert as_list(data["XMP-dc:Subject"]) == expected
    assert as_list(data["IPTC:Keywords"]) == iptc.iptc_keyword_values(expected)
    assert all(len(k.encode()) <= 64 for k in as_list(data["IPTC:Keywords"]))
    assert as_list(data["MWG:Keywords"]) == expected
    assert read_keywords(f).keywords == expected


def test_untag_leaves_a_file_rtagx_never_wrote_alone(originals, tmp_path):
    """Even a file whose IPTC and XMP disagree (stale digest) is not touched by removing nothing."""
    f = _copy(originals["digest-stale.jpg"], tmp_path / "s.jpg")
    before = f.read_bytes()
    assert not remove_own_keywords(f).changed
    assert f.read_bytes() == before


def test_untag_gives_back_a_jpeg_byte_for_byte_when_rtagx_made_all_its_metadata(samples_dir, tmp_path):
    """Canon_40D.jpg has neither XMP nor IPTC: rtagx creates both, and untag takes both away again."""
    f = _copy(samples_dir / "jpg" / "Canon_40D.jpg", tmp_path / "c.jpg")
    before = f.read_bytes()
    write_keywords(f, OURS, hierarchical=OURS_HIER)
    assert f.read_bytes() != before
    assert remove_own_keywords(f).changed
    assert f.read_bytes() == before
