"""Keyword writing checked against an independent reader (exiftool) on real camera files.

Every check that matters to a user goes through exiftool: the fields hold exactly the keywords,
dc:subject is a Bag, no warning appears that was not there before, EXIF bytes and pixels are
untouched. exiftool is called once per batch of files to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from rtagx.errors import MetadataError, UsageError
from rtagx.keywords import iptc, metadata, tiff_ifd
from rtagx.keywords import jpeg_segments as jpeg
from rtagx.keywords.metadata import (
    add_person_keywords,
    read_keywords,
    remove_own_keywords,
    resolve_target,
    write_keywords,
)

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed")

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
NON_ASCII = ["café", "日本", "Zürich"]


# ------------------------------------------------------------------ helpers


def _plain(value):
    """exiftool prints number-like and true/false values bare in JSON: bring them back to text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def exiftool_json(*paths: Path, tags: tuple[str, ...] = ()) -> dict[str, dict]:
    out = subprocess.run(
        [EXIFTOOL, "-j", "-G1", "-a", "-struct", *tags, *map(str, paths)], capture_output=True, check=False
    ).stdout.decode("utf-8")
    data = json.loads(out, parse_float=str, parse_int=str) if out.strip() else []
    return {d["SourceFile"]: _plain(d) for d in data}


def one(path: Path, *tags: str) -> dict:
    return exiftool_json(path, tags=tags)[str(path)]


def as_list(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def exiftool_text(path: Path, *tags: str) -> dict[str, list[str]]:
    """Tag values as exact text (exiftool's RDF/XML output: JSON turns "1.50" or "FALSE" into numbers)."""
    out = subprocess.run([EXIFTOOL, "-X", "-G1", "-a", *tags, str(path)], capture_output=True, check=True).stdout
    (desc,) = ET.fromstring(out)
    result: dict[str, list[str]] = {}
    for el in desc:
        uri, local = el.tag[1:].split("}")
        bag = next((c for c in el if c.tag in (f"{RDF}Bag", f"{RDF}Seq")), None)
        values = [li.text or "" for li in bag] if bag is not None else [el.text or ""]
        result[f"{uri.rstrip('/').split('/')[-2]}:{local}"] = values
    return result


def exiftool_warnings(*paths: Path) -> dict[str, set[str]]:
    """Warnings from ``exiftool -validate -warning -a`` per file (text output keeps every warning)."""
    out = subprocess.run(
        [EXIFTOOL, "-validate", "-warning", "-a", "-s", *map(str, paths)], capture_output=True, check=False
    ).stdout.decode("utf-8", "replace")
    result: dict[str, set[str]] = {str(p): set() for p in paths}
    current = str(paths[0]) if len(paths) == 1 else None
    for line in out.splitlines():
        if line.startswith("======== "):
            current = line[9:]
        elif current and line.startswith("Warning") and ":" in line:
            result[current].add(line.split(":", 1)[1].strip())
    return result


def xmp_packet_by_exiftool(path: Path) -> bytes:
    return subprocess.run([EXIFTOOL, "-b", "-XMP", str(path)], capture_output=True, check=True).stdout


def copy_writable(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    dest = dest_dir / (name or src.name)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o644)
    return dest


def pixels(path: Path) -> np.ndarray | str:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im).copy()
    except Exception as e:  # a damaged sample: it must fail the same way after our write
        return f"{type(e).__name__}"


def same_pixels(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return a.shape == b.shape and bool((a == b).all())


def untouched_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """Every JPEG header segment except the main XMP and Photoshop APP13, and the scan data (an EXIF
    segment holding XPKeywords is compared by same_exif_except_xp: those are kept in step)."""
    parts = jpeg.parse(data)
    kept = [s.raw for s in parts.segments if not (s.is_xmp() or s.is_photoshop() or has_xp(s))]
    return kept, parts.tail


def has_xp(seg: jpeg.Segment) -> bool:
    return seg.is_exif() and tiff_ifd.exif_xp_keywords(seg.payload[len(jpeg.EXIF_HEADER) :]) is not None


def same_exif_except_xp(before: bytes, after: bytes) -> bool:
    """Two EXIF payloads are the same but for the XPKeywords entry's count/offset, its old value's
    bytes, and a new value appended at the end."""
    old, new = bytearray(before[len(jpeg.EXIF_HEADER) :]), bytearray(after[len(jpeg.EXIF_HEADER) :])
    e = tiff_ifd.read_ifd0(lambda pos, n: bytes(old[pos : pos + n]))[1][tiff_ifd.XP_KEYWORDS]
    new = new[: len(old)]
    for buf in (old, new):
        buf[e.entry_pos + 4 : e.entry_pos + 12] = bytes(8)
        if e.size > 4:
            buf[e.value_pos : e.value_pos + e.size] = bytes(e.size)
    return old == new


def packet_of(path: Path) -> ET.Element:
    packet = jpeg.parse(path.read_bytes()).xmp_packet()
    assert packet is not None
    assert packet.startswith(b"<?xpacket begin=") and packet.rstrip().endswith(b'<?xpacket end="w"?>')
    return ET.fromstring(packet)


def subject_container(root: ET.Element) -> str:
    subjects = root.findall(f".//{DC}subject")
    assert len(subjects) == 1
    (container,) = list(subjects[0])
    return container.tag.replace(RDF, "")


def make_png(path: Path, size=(48, 32), mode="RGB", **kw) -> Path:
    rng = np.random.RandomState(1)
    arr = (rng.rand(size[1], size[0], len(mode)) * 255).astype("uint8")
    Image.fromarray(arr, mode).save(path, **kw)
    return path


@pytest.fixture
def jpg(tmp_path, samples_dir) -> Path:
    return copy_writable(samples_dir / "jpg" / "Canon_40D.jpg", tmp_path)


def all_camera_jpegs(samples_dir: Path) -> list[Path]:
    return sorted(p for p in (samples_dir / "jpg").rglob("*.jpg"))


# ------------------------------------------------------------------ camera samples


@needs_exiftool
def test_every_camera_jpeg_gets_keywords_and_keeps_exif_pixels_and_validity(tmp_path, samples_dir):
    srcs = all_camera_jpegs(samples_dir)
    assert len(srcs) > 20
    files = [copy_writable(s, tmp_path, f"{k:02d}_{s.name}") for k, s in enumerate(srcs)]
    before_bytes = {p: p.read_bytes() for p in files}
    before_pixels = {p: pixels(p) for p in files}
    before_kw = {p: read_keywords(p).keywords for p in files}
    warnings_before = exiftool_warnings(*files)
    ours = ["rtagx-test", *NON_ASCII]

    for p in files:
        result = write_keywords(p, ours, hierarchical=["places|Zürich"])
        assert result.changed and result.target == "embed" and result.written_to == p
        assert result.keywords_after == before_kw[p] + [k for k in ours if k not in before_kw[p]]

    meta = exiftool_json(*files)
    warnings_after = exiftool_warnings(*files)
    for p in files:
        data = p.read_bytes()
        # EXIF (maker notes included), ICC, tables and the scan data keep their exact bytes.
        assert untouched_segments(data) == untouched_segments(before_bytes[p]), p.name
        assert same_pixels(pixels(p), before_pixels[p]), p.name
        expected = before_kw[p] + [k for k in ours if k not in before_kw[p]]
        m = meta[str(p)]
        assert as_list(m.get("XMP-dc:Subject")) == expected, p.name
        assert as_list(m.get("IPTC:Keywords")) == expected, p.name
        assert m.get("IPTC:CodedCharacterSet") == "UTF8"
        assert "places|Zürich" in as_list(m.get("XMP-lr:HierarchicalSubject"))
        assert subject_container(packet_of(p)) == "Bag"
        new_warnings = warnings_after[str(p)] - warnings_before[str(p)]
        assert not new_warnings, (p.name, new_warnings)
        # Read back by us, and a second identical write writes nothing.
        back = read_keywords(p)
        assert back.keywords == expected and set(back.owned) == {k for k in ours if k not in before_kw[p]}
        mtime = p.stat().st_mtime_ns
        assert not write_keywords(p, ours, hierarchical=["places|Zürich"]).changed
        assert p.stat().st_mtime_ns == mtime and p.read_bytes() == data


@needs_exiftool
def test_camera_tiffs_keep_exif_values_pixels_and_validity(tmp_path, samples_dir):
    srcs = sorted((samples_dir / "tiff").glob("*.tiff"))
    assert srcs
    files = [copy_writable(s, tmp_path) for s in srcs]
    skip = (
        "-x",
        "XMP:all",
        "-x",
        "IPTC:all",
        "-x",
        "File:all",
        "-x",
        "System:all",
        "-x",
        "ExifTool:all",
        "-x",
        "Composite:all",
        "-x",
        "StripOffsets",
        "-x",
        "TileOffsets",
    )
    exif_before = exiftool_json(*files, tags=skip)
    px_before = {p: pixels(p) for p in files}
    warnings_before = exiftool_warnings(*files)
    for p in files:
        assert write_keywords(p, NON_ASCII).changed
    exif_after = exiftool_json(*files, tags=skip)
    warnings_after = exiftool_warnings(*files)
    meta = exiftool_json(*files)
    for p in files:
        assert exif_after[str(p)] == exif_before[str(p)]
        assert same_pixels(pixels(p), px_before[p])
        assert as_list(meta[str(p)].get("XMP-dc:Subject")) == NON_ASCII
        assert as_list(meta[str(p)].get("IPTC:Keywords")) == NON_ASCII
        assert not warnings_after[str(p)] - warnings_before[str(p)]
        assert read_keywords(p).keywords == NON_ASCII
        assert not write_keywords(p, NON_ASCII).changed


# ------------------------------------------------------------------ generated formats


@needs_exiftool
def test_png_webp_tiff_embed_and_gif_gets_a_sidecar(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "TestMake"
    files = {
        "png": make_png(tmp_path / "a.png", exif=exif),
        "webp": make_png(tmp_path / "b.webp", lossless=True, exif=exif),
        "webp-lossy": make_png(tmp_path / "c.webp", quality=80),
        "webp-alpha": make_png(tmp_path / "d.webp", mode="RGBA", lossless=True),
        "tiff": make_png(tmp_path / "e.tif"),
        "gif": make_png(tmp_path / "f.gif"),
    }
    before = {k: pixels(p) for k, p in files.items()}
    gif_bytes = files["gif"].read_bytes()
    warnings_before = exiftool_warnings(*files.values())
    results = {k: write_keywords(p, NON_ASCII) for k, p in files.items()}
    assert {k: r.target for k, r in results.items()} == {
        "png": "embed",
        "webp": "embed",
        "webp-lossy": "embed",
        "webp-alpha": "embed",
        "tiff": "embed",
        "gif": "sidecar",
    }
    gif_sidecar = tmp_path / "f.gif.xmp"
    assert results["gif"].written_to == gif_sidecar and files["gif"].read_bytes() == gif_bytes
    meta = exiftool_json(*files.values(), gif_sidecar)
    warnings_after = exiftool_warnings(*files.values())
    for k, p in files.items():
        assert same_pixels(pixels(p), before[k]), k
        assert not warnings_after[str(p)] - warnings_before[str(p)], k
        assert read_keywords(p).keywords == NON_ASCII
        assert not write_keywords(p, NON_ASCII).changed
    for k in ("png", "webp", "webp-lossy", "webp-alpha", "tiff"):
        m = meta[str(files[k])]
        assert as_list(m.get("XMP-dc:Subject")) == NON_ASCII, k
        if k == "tiff":
            assert as_list(m.get("IPTC:Keywords")) == NON_ASCII
        else:  # PNG and WebP: XMP only
            assert not any(key.startswith("IPTC") for key in m), k
        assert subject_container(ET.fromstring(xmp_packet_by_exiftool(files[k]))) == "Bag", k
    assert meta[str(files["png"])]["IFD0:Make"] == "TestMake"
    assert meta[str(files["webp"])]["IFD0:Make"] == "TestMake"
    assert as_list(meta[str(gif_sidecar)].get("XMP-dc:Subject")) == NON_ASCII
    for k, p in files.items():
        assert remove_own_keywords(p).removed == NON_ASCII, k
    meta = exiftool_json(*files.values(), gif_sidecar)
    for key, m in meta.items():
        assert "XMP-dc:Subject" not in m and "IPTC:Keywords" not in m, key
    for k, p in files.items():
        assert same_pixels(pixels(p), before[k]), k


def test_resolve_target():
    assert resolve_target(Path("a.JPG")) == "embed"
    assert resolve_target(Path("a.webp")) == "embed"
    for name in ("a.CR2", "a.nef", "a.dng", "a.heic", "a.avif", "a.cr3", "a.jxl", "a.gif", "a.bmp"):
        assert resolve_target(Path(name)) == "sidecar", name
    assert resolve_target(Path("a.CR2"), "txt") == "txt"
    with pytest.raises(MetadataError) as e:
        resolve_target(Path("a.CR2"), "embed")
    assert e.value.reason == "unsupported-format"
    with pytest.raises(UsageError):
        resolve_target(Path("a.jpg"), "somewhere")


# ------------------------------------------------------------------ ownership and modes


@needs_exiftool
def test_keywords_added_for_a_person_are_never_rtagxs(jpg, tmp_path):
    write_keywords(jpg, ["dog", "cat"])
    r = add_person_keywords(jpg, ["Cat", "holiday"])  # "cat" was rtagx's: handed over to the person
    assert r.changed and r.added == ["holiday"] and r.keywords_after == ["dog", "cat", "holiday"]
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["dog", "cat", "holiday"]
    assert as_list(m["IPTC:Keywords"]) == ["dog", "cat", "holiday"]
    assert as_list(m["XMP-rtagx:Keywords"]) == ["dog"]
    assert not add_person_keywords(jpg, ["holiday"]).changed  # already the person's: nothing to write
    # neither replace-own nor untag removes them
    assert write_keywords(jpg, ["bird"]).removed == ["dog"]
    assert remove_own_keywords(jpg).removed == ["bird"]
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["cat", "holiday"]
    assert as_list(m["IPTC:Keywords"]) == ["cat", "holiday"]
    assert not any(k.startswith("XMP-rtagx") for k in m)

    # a file with no keywords at all gets IPTC and XMP keywords, and nothing of rtagx's
    bare = tmp_path / "bare.jpg"
    Image.new("RGB", (16, 16), "gray").save(bare)
    add_person_keywords(bare, ["sunset"])
    m = one(bare)
    assert as_list(m["XMP-dc:Subject"]) == ["sunset"] and as_list(m["IPTC:Keywords"]) == ["sunset"]
    assert b"ns.rtagx.dev" not in bare.read_bytes()
    assert not remove_own_keywords(bare).changed

    # the sidecar rtagx would use: the keyword goes there, unowned
    raw = tmp_path / "photo.dng"
    raw.write_bytes(b"not really raw")
    add_person_keywords(raw, ["beach"], hierarchical=["place|beach"])
    m = one(tmp_path / "photo.dng.xmp")
    assert as_list(m["XMP-dc:Subject"]) == ["beach"]
    assert as_list(m["XMP-lr:HierarchicalSubject"]) == ["place|beach"]
    assert not any(k.startswith("XMP-rtagx") for k in m)
    assert read_keywords(raw).owned == []


@needs_exiftool
def test_replace_own_keeps_a_persons_keywords_even_with_the_same_text(jpg):
    # A person tagged the photo with another tool first.
    subprocess.run(
        [
            EXIFTOOL,
            "-q",
            "-overwrite_original",
            "-XMP-dc:Subject=holiday",
            "-XMP-dc:Subject=dog",
            "-IPTC:Keywords=holiday",
            "-IPTC:Keywords=dog",
            str(jpg),
        ],
        check=True,
    )
    exif_before = jpeg.parse(jpg.read_bytes()).exif_payloads()

    r1 = write_keywords(jpg, ["dog", "cat"])
    assert r1.added == ["cat"] and r1.keywords_after == ["holiday", "dog", "cat"]
    assert read_keywords(jpg).owned == ["cat"]  # "dog" was the person's: it never becomes ours

    r2 = write_keywords(jpg, ["bird"])
    assert r2.removed == ["cat"] and r2.added == ["bird"]
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["holiday", "dog", "bird"]
    assert as_list(m["IPTC:Keywords"]) == ["holiday", "dog", "bird"]
    assert as_list(m["XMP-rtagx:Keywords"]) == ["bird"]

    r3 = remove_own_keywords(jpg)
    assert r3.changed and r3.removed == ["bird"]
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["holiday", "dog"]
    assert as_list(m["IPTC:Keywords"]) == ["holiday", "dog"]
    assert not any(k.startswith("XMP-rtagx") for k in m)
    assert b"ns.rtagx.dev" not in jpg.read_bytes()
    assert not remove_own_keywords(jpg).changed
    assert jpeg.parse(jpg.read_bytes()).exif_payloads() == exif_before


@needs_exiftool
def test_modes(jpg):
    write_keywords(jpg, ["a", "b"])
    assert write_keywords(jpg, ["c"], mode="merge").keywords_after == ["a", "b", "c"]
    assert read_keywords(jpg).owned == ["a", "b", "c"]
    r = write_keywords(jpg, ["c", "d"], mode="replace-own")
    assert r.keywords_after == ["c", "d"] and r.removed == ["a", "b"]
    # replace-all also drops a person's keyword; a person's keyword that stays is still not ours.
    subprocess.run(
        [EXIFTOOL, "-q", "-overwrite_original", "-XMP-dc:Subject+=mine", "-XMP-dc:Subject+=keep", str(jpg)], check=True
    )
    r = write_keywords(jpg, ["keep", "e"], mode="replace-all")
    assert r.keywords_after == ["keep", "e"] and r.removed == ["c", "d", "mine"]
    fk = read_keywords(jpg)
    assert fk.keywords == ["keep", "e"] and fk.owned == ["e"]
    with pytest.raises(UsageError):
        write_keywords(jpg, ["x"], mode="replace")


def test_idempotent_dry_run_preserve_mtime_and_permissions(jpg, tmp_path):
    os.chmod(jpg, 0o640)
    original = jpg.read_bytes()
    r = write_keywords(jpg, ["a"], dry_run=True)
    assert r.changed and jpg.read_bytes() == original
    os.utime(jpg, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    r = write_keywords(jpg, ["a"], preserve_mtime=True)
    assert r.changed and jpg.read_bytes() != original
    assert jpg.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert stat.S_IMODE(jpg.stat().st_mode) == 0o640
    written = jpg.read_bytes()
    r = write_keywords(jpg, ["a"])
    assert not r.changed and r.written_to is None and jpg.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == [jpg.name]  # no temporary file left


def test_write_through_a_symlink_keeps_the_link(jpg, tmp_path):
    link = tmp_path / "link.jpg"
    link.symlink_to(jpg)
    write_keywords(link, ["a"])
    assert link.is_symlink() and read_keywords(jpg).keywords == ["a"]


@needs_exiftool
def test_keyword_root_and_hierarchy_carry_existing_flat_keywords(jpg):
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-dc:Subject=holiday", str(jpg)], check=True)
    write_keywords(jpg, ["dog", "cat"], hierarchical=["animal|dog"], keyword_root="auto")
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["holiday", "dog", "cat"]
    assert as_list(m["XMP-lr:HierarchicalSubject"]) == ["holiday", "auto|animal|dog", "auto|cat"]
    r = write_keywords(jpg, ["cat"], keyword_root="auto")
    assert r.removed == ["dog"]
    assert as_list(one(jpg)["XMP-lr:HierarchicalSubject"]) == ["holiday", "auto|cat"]
    remove_own_keywords(jpg)
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["holiday"]
    assert "XMP-lr:HierarchicalSubject" not in m  # rtagx made the field; nothing hierarchical is left


@needs_exiftool
def test_existing_keyword_fields_are_kept_in_step(jpg):
    subprocess.run(
        [
            EXIFTOOL,
            "-q",
            "-overwrite_original",
            "-XMP-dc:Subject=person",
            "-XMP-digiKam:TagsList=people/person",
            "-XMP-microsoft:LastKeywordXMP=person",
            "-XMP-mediapro:CatalogSets=people|person",
            "-XMP-lr:HierarchicalSubject=people|person",
            str(jpg),
        ],
        check=True,
    )
    write_keywords(jpg, ["dog"], hierarchical=["animal|dog"])
    m = one(jpg)
    assert as_list(m["XMP-dc:Subject"]) == ["person", "dog"]
    assert as_list(m["XMP-lr:HierarchicalSubject"]) == ["people|person", "animal|dog"]
    assert as_list(m["XMP-digiKam:TagsList"]) == ["people/person", "animal/dog"]
    assert as_list(m["XMP-microsoft:LastKeywordXMP"]) == ["person", "animal/dog"]
    assert as_list(m["XMP-mediapro:CatalogSets"]) == ["people|person", "animal|dog"]
    remove_own_keywords(jpg)
    m = one(jpg)
    assert as_list(m["XMP-digiKam:TagsList"]) == ["people/person"]
    assert as_list(m["XMP-mediapro:CatalogSets"]) == ["people|person"]
    assert as_list(m["XMP-dc:Subject"]) == ["person"]


# ------------------------------------------------------------------ IPTC details


@needs_exiftool
def test_long_keywords_are_cut_at_a_character_boundary_in_iptc_only(jpg):
    long_ascii = "a" * 63 + "é"  # 65 bytes
    long_cjk = "日本" * 20  # 120 bytes
    write_keywords(jpg, [long_ascii, long_cjk, "1.50", "FALSE"])
    m = exiftool_text(jpg, "-XMP-dc:Subject", "-IPTC:Keywords")
    assert m["XMP-dc:Subject"] == [long_ascii, long_cjk, "1.50", "FALSE"]
    assert m["IPTC:Keywords"] == ["a" * 63, ("日本" * 20)[:21], "1.50", "FALSE"]
    assert not exiftool_warnings(jpg)[str(jpg)]
    assert not write_keywords(jpg, [long_ascii, long_cjk, "1.50", "FALSE"]).changed


def _with_app13(path: Path, datasets: list[iptc.Dataset], digest: bytes | None = None) -> None:
    """Put an IPTC block (and optionally a digest, right or wrong) into a JPEG, as old tools did."""
    iim = iptc.build_iim(datasets)
    res = [iptc.Resource(b"8BIM", iptc.IPTC_RESOURCE, b"\x00", iim)]
    if digest is not None:
        res.append(iptc.Resource(b"8BIM", iptc.IPTC_DIGEST_RESOURCE, b"\x00", digest))
    parts = jpeg.splice(jpeg.parse(path.read_bytes()), irb=iptc.build_irb(res))
    path.write_bytes(parts.to_bytes())


@needs_exiftool
def test_legacy_latin1_iptc_is_read_and_converted(jpg):
    _with_app13(
        jpg,
        [
            iptc.Dataset(2, 0, b"\x00\x04"),
            iptc.Dataset(2, 25, "Zürich".encode("latin-1")),
            iptc.Dataset(2, 120, "Café au lait".encode("latin-1")),
        ],
    )
    assert read_keywords(jpg).keywords == ["Zürich"]
    write_keywords(jpg, ["日本"])
    m = one(jpg)
    assert m["IPTC:CodedCharacterSet"] == "UTF8"
    assert as_list(m["IPTC:Keywords"]) == ["Zürich", "日本"]
    assert m["IPTC:Caption-Abstract"] == "Café au lait"
    assert as_list(m["XMP-dc:Subject"]) == ["Zürich", "日本"]


@needs_exiftool
def test_mwg_digest_rule_and_digest_update(jpg):
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XMP-dc:Subject=from-xmp", str(jpg)], check=True)
    ds = [iptc.Dataset(1, 90, iptc.UTF8_MARKER), iptc.Dataset(2, 25, b"from-iptc")]
    _with_app13(jpg, ds, digest=iptc.digest(iptc.build_iim(ds)))
    assert read_keywords(jpg).keywords == ["from-xmp"]  # digest matches: XMP wins
    _with_app13(jpg, ds, digest=b"\x00" * 16)
    assert read_keywords(jpg).keywords == ["from-iptc"]  # digest stale: IPTC was edited later
    write_keywords(jpg, ["new"])
    m = one(jpg, "-XMP-dc:Subject", "-IPTC:Keywords", "-IPTCDigest", "-CurrentIPTCDigest")
    assert as_list(m["XMP-dc:Subject"]) == ["from-iptc", "new"]
    assert as_list(m["IPTC:Keywords"]) == ["from-iptc", "new"]
    assert m["Photoshop:IPTCDigest"] == m["File:CurrentIPTCDigest"]
    assert read_keywords(jpg).keywords == ["from-iptc", "new"]


def test_unreadable_iptc_is_left_untouched_and_xmp_still_written(jpg):
    _with_app13(jpg, [iptc.Dataset(2, 25, b"ok")])
    data = bytearray(jpg.read_bytes())
    pos = data.index(b"\x1c\x02\x19")
    data[pos] = 0x7F  # no longer an IIM tag marker
    jpg.write_bytes(bytes(data))
    app13 = jpeg.parse(bytes(data)).photoshop_irb()
    r = write_keywords(jpg, ["a"])
    assert r.changed and metadata.WARN_IPTC_UNREADABLE in r.warnings
    assert jpeg.parse(jpg.read_bytes()).photoshop_irb() == app13
    assert read_keywords(jpg).keywords == ["a"]


@needs_exiftool
def test_exif_xpkeywords_are_kept_in_step_in_jpeg_and_tiff(tmp_path, samples_dir):
    """XPKeywords (Windows) follow the same removals and additions; every other EXIF byte stays put."""
    p = copy_writable(samples_dir / "jpg" / "xmp" / "no_exif.jpg", tmp_path)
    t = copy_writable(samples_dir / "tiff" / "BSG1.tiff", tmp_path)
    subprocess.run([EXIFTOOL, "-q", "-overwrite_original", "-XPKeywords=person;Paris", str(t)], check=True)
    before = exiftool_json(p, t, tags=("-XPKeywords",))
    warned = exiftool_warnings(p, t)
    assert before[str(p)]["IFD0:XPKeywords"] == "tag"
    (exif,) = jpeg.parse(p.read_bytes()).exif_payloads()
    for f in (p, t):
        r = write_keywords(f, ["dog", "a much longer keyword than the old value had room for"])
        assert r.changed and not r.warnings
    assert same_exif_except_xp(exif, jpeg.parse(p.read_bytes()).exif_payloads()[0])
    after = exiftool_json(p, t, tags=("-XPKeywords",))
    assert after[str(p)]["IFD0:XPKeywords"] == "tag;dog;a much longer keyword than the old value had room for"
    assert after[str(t)]["IFD0:XPKeywords"] == "person;Paris;dog;a much longer keyword than the old value had room for"
    for f in (p, t):
        remove_own_keywords(f)
    again = exiftool_json(p, t, tags=("-XPKeywords",))
    assert again[str(p)]["IFD0:XPKeywords"] == "tag" and again[str(t)]["IFD0:XPKeywords"] == "person;Paris"
    assert all(exiftool_warnings(p, t)[k] <= warned[k] for k in warned)
    assert read_keywords(p).keywords == ["tag"]


def test_xpkeywords_that_would_overflow_the_exif_segment_are_left_with_a_warning(tmp_path, samples_dir):
    p = copy_writable(samples_dir / "jpg" / "xmp" / "no_exif.jpg", tmp_path)
    (tmp_path / "comment.txt").write_text("x" * 59000)
    subprocess.run(
        [EXIFTOOL, "-q", "-overwrite_original", f"-UserComment<={tmp_path / 'comment.txt'}", str(p)], check=True
    )
    (exif,) = jpeg.parse(p.read_bytes()).exif_payloads()
    many = [f"k{i:03d}-" + "y" * 40 for i in range(60)]  # 2.8 KB more of XPKeywords: past 64 KB
    r = write_keywords(p, many)
    assert r.changed and r.warnings == [metadata.WARN_XPKEYWORDS]
    assert jpeg.parse(p.read_bytes()).exif_payloads() == [exif]
    assert read_keywords(p).keywords == ["tag", *many]


# ------------------------------------------------------------------ sidecars


DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmp:Rating="4"
   darktable:history_end="2">
   <darktable:history>
    <rdf:Seq>
     <rdf:li darktable:operation="exposure" darktable:enabled="1" darktable:params="0000"/>
     <rdf:li darktable:operation="colorin" darktable:enabled="1" darktable:params="gz12"/>
    </rdf:Seq>
   </darktable:history>
   <dc:subject>
    <rdf:Seq>
     <rdf:li>person</rdf:li>
    </rdf:Seq>
   </dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@needs_exiftool
def test_sidecar_merge_keeps_unrelated_content(tmp_path):
    raw = tmp_path / "IMG_1.CR2"
    raw.write_bytes(b"not really a raw file")
    side = tmp_path / "IMG_1.CR2.xmp"
    side.write_text(DARKTABLE_SIDECAR)
    r = write_keywords(raw, ["dog", "café"])
    assert r.target == "sidecar" and r.written_to == side
    assert raw.read_bytes() == b"not really a raw file"
    m = one(side)
    assert as_list(m["XMP-dc:Subject"]) == ["person", "dog", "café"]
    assert m["XMP-xmp:Rating"] == "4"
    assert m["XMP-darktable:History_end"] == "2"
    assert [h["Operation"] for h in m["XMP-darktable:History"]] == ["exposure", "colorin"]
    assert not exiftool_warnings(side)[str(side)]
    root = ET.fromstring(side.read_bytes().split(b"?>", 1)[1])  # after the <?xml?> declaration
    assert subject_container(root) == "Bag"
    assert side.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<?xpacket begin=')
    assert read_keywords(raw).owned == ["dog", "café"]
    remove_own_keywords(raw)
    m = one(side)
    assert as_list(m["XMP-dc:Subject"]) == ["person"] and m["XMP-xmp:Rating"] == "4"


@needs_exiftool
def test_sidecar_styles_new_and_read_both(tmp_path):
    a = tmp_path / "IMG_2.NEF"
    a.write_bytes(b"raw")
    r = write_keywords(a, ["日本"], sidecar_style="stem")
    assert r.written_to == tmp_path / "IMG_2.xmp"
    data = r.written_to.read_bytes()
    assert data.startswith(b"<?xpacket begin=") and b'<?xpacket end="w"?>' in data
    assert as_list(one(r.written_to)["XMP-dc:Subject"]) == ["日本"]
    # Read with the other style: both names are looked at.
    fk = read_keywords(a, sidecar_style="ext")
    assert fk.keywords == ["日本"] and fk.source == "sidecar"
    # Writing with the other style updates the existing sidecar instead of making a second one.
    write_keywords(a, ["Zürich"], sidecar_style="ext")
    assert not (tmp_path / "IMG_2.NEF.xmp").exists()
    assert read_keywords(a).keywords == ["Zürich"]
    # A JPEG can be told to use a sidecar, too; the JPEG stays untouched.
    b = make_png(tmp_path / "c.jpg")
    before = b.read_bytes()
    assert write_keywords(b, ["x"], target="sidecar").written_to == tmp_path / "c.jpg.xmp"
    assert b.read_bytes() == before
    assert read_keywords(b, target="sidecar").keywords == ["x"]
    assert read_keywords(tmp_path / "nothing.CR2").source == "none"


def test_heif_gets_a_sidecar_and_stays_untouched(tmp_path, samples_dir):
    heif = copy_writable(samples_dir / "heic" / "samplefilehub.heif", tmp_path)
    before = heif.read_bytes()
    r = write_keywords(heif, ["日本"])
    assert r.target == "sidecar" and r.written_to == tmp_path / "samplefilehub.heif.xmp"
    assert heif.read_bytes() == before and read_keywords(heif).keywords == ["日本"]


def test_broken_sidecar_is_reported_and_never_overwritten(tmp_path):
    raw = tmp_path / "IMG_3.ARW"
    raw.write_bytes(b"raw")
    side = tmp_path / "IMG_3.ARW.xmp"
    side.write_text("<x:xmpmeta><rdf:RDF>unclosed")
    with pytest.raises(MetadataError) as e:
        write_keywords(raw, ["a"])
    assert e.value.reason == "bad-sidecar"
    assert side.read_text() == "<x:xmpmeta><rdf:RDF>unclosed"


def test_txt_captions(tmp_path):
    img = make_png(tmp_path / "IMG_1.png")
    before = img.read_bytes()
    r = write_keywords(img, ["dog", "café"], target="txt")
    cap = tmp_path / "IMG_1.txt"
    assert r.written_to == cap and cap.read_text(encoding="utf-8") == "dog, café\n"
    assert not write_keywords(img, ["dog", "café"], target="txt").changed
    assert write_keywords(img, ["cat"], target="txt", mode="merge").keywords_after == ["dog", "café", "cat"]
    assert read_keywords(img, target="txt").keywords == ["dog", "café", "cat"]
    r = write_keywords(img, ["bird"], target="txt", caption_ext=".caption")
    assert r.written_to == tmp_path / "IMG_1.caption"
    with pytest.raises(MetadataError) as e:
        write_keywords(img, ["a, b"], target="txt")
    assert e.value.reason == "bad-keyword"
    assert img.read_bytes() == before
    assert remove_own_keywords(img, target="txt").changed and not cap.exists()


def test_target_none_writes_nothing(jpg):
    before = jpg.read_bytes()
    r = write_keywords(jpg, ["a"], target="none")
    assert r.target == "none" and not r.changed and jpg.read_bytes() == before


# ------------------------------------------------------------------ failures are reported


def test_read_only_file_and_folder_are_reported(jpg, tmp_path):
    os.chmod(jpg, 0o444)
    for dry_run in (True, False):
        with pytest.raises(MetadataError) as e:
            write_keywords(jpg, ["a"], dry_run=dry_run)
        assert e.value.reason == "read-only"
    assert read_keywords(jpg).keywords == []  # reading a read-only file is fine
    os.chmod(jpg, 0o644)
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(MetadataError) as e:
            write_keywords(jpg, ["a"])
        assert e.value.reason == "read-only"
    finally:
        os.chmod(tmp_path, 0o755)
    assert write_keywords(jpg, ["a"]).changed


def test_unreadable_and_unsupported_files_are_reported(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is no image at all")
    with pytest.raises(MetadataError) as e:
        write_keywords(junk, ["a"])
    assert e.value.reason == "unsupported-format"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(b"\xff\xd8\xff\xe1\x10\x00Exif\x00\x00")  # ends inside the EXIF segment
    with pytest.raises(MetadataError) as e:
        write_keywords(cut, ["a"])
    assert e.value.reason == "corrupt"
    png = make_png(tmp_path / "cut.png")
    png.write_bytes(png.read_bytes()[:40])
    with pytest.raises(MetadataError):
        write_keywords(png, ["a"])
    with pytest.raises(MetadataError) as e:
        write_keywords(tmp_path / "missing.jpg", ["a"])
    assert e.value.reason == "missing"
    raw = tmp_path / "a.CR2"
    raw.write_bytes(b"raw")
    with pytest.raises(MetadataError) as e:
        write_keywords(raw, ["a"], target="embed")
    assert e.value.reason == "unsupported-format"


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "tab\there", "nul\x00", "bell\x07", "a|b", "\ufffe"])
def test_bad_keywords_are_rejected_with_a_reason(jpg, bad):
    before = jpg.read_bytes()
    with pytest.raises(MetadataError) as e:
        write_keywords(jpg, ["fine", bad])
    assert e.value.reason == "bad-keyword"
    assert jpg.read_bytes() == before


def test_xmp_packet_that_is_not_xml_is_never_overwritten(jpg):
    parts = jpeg.splice(jpeg.parse(jpg.read_bytes()), xmp_packet=b"<x:xmpmeta><broken")
    jpg.write_bytes(parts.to_bytes())
    before = jpg.read_bytes()
    with pytest.raises(MetadataError) as e:
        write_keywords(jpg, ["a"])
    assert e.value.reason == "bad-xmp"
    assert jpg.read_bytes() == before


# ------------------------------------------------------------------ keyword text, fuzzed

_VALID_CHAR = st.characters(blacklist_categories=("Cs", "Cc"))
_SPECIAL = [
    "/",
    ",",
    ";",
    " ",
    "  ",
    "é",
    "日",
    "\u200d",
    "&",
    "<",
    "]]>",
    "ẞ",
    "\U0001f600",
    "\u0301",
    "\xa0",
    "\ufeff",
    "\u2028",
    "\ue000",
]
_INVALID = ["|", "\n", "\t", "\r", "\x00", "\x1b", "\x7f", "\x85", "\ufffe", "\ufdd0"]
_PIECE = st.one_of(st.text(_VALID_CHAR, min_size=1, max_size=8), st.sampled_from(_SPECIAL * 3 + _INVALID))
_KEYWORD = st.lists(_PIECE, min_size=1, max_size=5).map("".join)
_LONG = st.builds(lambda n, ch: ch * n, st.integers(20, 40), st.sampled_from(["é", "日", "a", "\U0001f600"]))
_WORDS = st.lists(st.one_of(_KEYWORD, _LONG), min_size=1, max_size=5)


def _expect(words: list[str]) -> list[str] | None:
    """The keywords a write should leave, or None when the input must be rejected as bad-keyword."""
    try:
        return list(dict.fromkeys(metadata.clean_keyword(w) for w in words))
    except MetadataError as e:
        assert e.reason == "bad-keyword"
        return None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=_WORDS)
def test_keyword_text_round_trips_through_our_reader(jpg, words):
    work = jpg.with_name("fuzz-own.jpg")
    shutil.copyfile(jpg, work)
    expected = _expect(words)
    if expected is None:
        with pytest.raises(MetadataError) as e:
            write_keywords(work, words)
        assert e.value.reason == "bad-keyword"
        return
    assert write_keywords(work, words).keywords_after == expected
    back = read_keywords(work)
    assert back.keywords == expected and back.owned == expected
    assert not write_keywords(work, words).changed
    assert not remove_own_keywords(work).changed or read_keywords(work).keywords == []


@needs_exiftool
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=_WORDS)
def test_keyword_text_round_trips_through_exiftool_or_is_rejected(jpg, words):
    work = jpg.with_name("fuzz.jpg")
    shutil.copyfile(jpg, work)
    expected = _expect(words)
    if expected is None:
        with pytest.raises(MetadataError) as e:
            write_keywords(work, words)
        assert e.value.reason == "bad-keyword"
        return
    write_keywords(work, words)
    m = exiftool_text(work, "-XMP-dc:Subject", "-IPTC:Keywords")
    assert m["XMP-dc:Subject"] == expected
    assert m["IPTC:Keywords"] == iptc.iptc_keyword_values(expected)


# ------------------------------------------------------------------ other writers


class ExiftoolWriter:
    """A real exiftool (``-stay_open``) adding keywords to XMP and IPTC, as a photo manager would."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [EXIFTOOL, "-stay_open", "True", "-@", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def add_keyword(self, path: Path, keyword: str) -> bool:
        """True when exiftool reports the file updated."""
        args = [f"-XMP-dc:Subject+={keyword}", f"-IPTC:Keywords+={keyword}", "-overwrite_original", str(path)]
        self.proc.stdin.write("\n".join([*args, "-execute"]) + "\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self.proc.stdout.readline()) and not line.startswith("{ready"):
            lines.append(line)
        return any("1 image files updated" in x for x in lines)

    def close(self) -> None:
        self.proc.stdin.write("-stay_open\nFalse\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


@needs_exiftool
def test_another_programs_keywords_are_never_lost_while_rtagx_writes(tmp_path, samples_dir):
    """A real exiftool loop adds keywords to the same files rtagx keeps rewriting: every keyword
    exiftool reported written is still there at the end (the write path re-checks the file just
    before its rename and redoes the edit on the new content)."""
    import threading

    names = ["Canon_40D.jpg", "Nikon_D70.jpg", "Pentax_K10D.jpg", "Kodak_CX7530.jpg"]
    files = [copy_writable(samples_dir / "jpg" / n, tmp_path) for n in names]
    tiff = copy_writable(samples_dir / "tiff" / "BSG1.tiff", tmp_path)
    files.append(tiff)
    stop = threading.Event()
    problems: list[str] = []
    rtagx_writes = [0]

    def rtagx_loop() -> None:
        k = 0
        while not stop.is_set():
            for f in files:
                try:
                    write_keywords(f, ["dog", "beach"] if k % 2 else ["cat", "snow"])
                    rtagx_writes[0] += 1
                except MetadataError as e:
                    if e.reason != "changed-during-write":
                        problems.append(f"{f.name}: {e}")
            k += 1

    writer = ExiftoolWriter()
    thread = threading.Thread(target=rtagx_loop)
    thread.start()
    written: dict[Path, list[str]] = {f: [] for f in files}
    try:
        for i in range(240):
            f = files[i % len(files)]
            word = f"person-{i}"
            if writer.add_keyword(f, word):
                written[f].append(word)
    finally:
        stop.set()
        thread.join()
        writer.close()
    assert not problems
    assert rtagx_writes[0] > 20 and sum(map(len, written.values())) > 200
    found = exiftool_json(*files, tags=("-XMP-dc:Subject",))
    lost = {
        f.name: [w for w in words if w not in as_list(found[str(f)].get("XMP-dc:Subject"))]
        for f, words in written.items()
    }
    assert not any(lost.values()), lost
    for f in files:  # and rtagx's own keywords stay consistent: one current set, its record intact
        back = read_keywords(f)
        assert set(back.owned) in ({"dog", "beach"}, {"cat", "snow"}), (f.name, back)


def test_reports_are_replaced_by_the_same_atomic_write_as_photos(tmp_path):
    """analysis.write_text_atomically is the keywords' atomic replace: permissions kept, no temp left."""
    from rtagx.analysis.analyze import write_text_atomically

    out = tmp_path / "report.txt"
    out.write_text("old\n")
    os.chmod(out, 0o640)
    write_text_atomically(out, "new\n")
    assert out.read_text() == "new\n" and stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_write_warnings_reach_the_user_with_v_and_in_json(tmp_path, tiny_clip, samples_dir):
    """A warning from a keyword write is shown by ``tag -v`` and carried in ``--json`` (tag and untag)."""
    from click.testing import CliRunner

    from rtagx.cli.commands import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    jpg = copy_writable(samples_dir / "jpg" / "Canon_40D.jpg", photos)
    _with_app13(jpg, [iptc.Dataset(2, 25, b"ok")])
    data = bytearray(jpg.read_bytes())
    data[data.index(b"\x1c\x02\x19")] = 0x7F  # an IPTC block nobody can read: left as it is, with a warning
    jpg.write_bytes(bytes(data))
    (tmp_path / "tags.txt").write_text("dog\ncat\n")
    cfg, ckpt = tiny_clip
    model = ["--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(tmp_path / "c.db")]
    runner = CliRunner()
    args = ["tag", str(photos), "--tags", str(tmp_path / "tags.txt"), "--threshold", "-1", "--top-k", "1", "--yes"]
    text = runner.invoke(cli, [*args, "-v", *model], catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert f"warning: {metadata.WARN_IPTC_UNREADABLE}" in text.output
    untag = runner.invoke(cli, ["untag", str(photos), "--json", *model[4:]], catch_exceptions=False)
    (line,) = [json.loads(x) for x in untag.output.splitlines() if x.startswith("{") and '"path"' in x]
    assert line["action"] == "written" and line["warnings"] == [metadata.WARN_IPTC_UNREADABLE]


# Another program that edits the file each time someone has read it (inotify: after every close of
# a read), the worst case for a read-edit-write: every try finds the file changed.
_TOUCH_AFTER_EACH_READ = """
import ctypes, os, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, path.encode(), 0x10) >= 0  # IN_CLOSE_NOWRITE
print("ready", flush=True)
ns = 10**18
while True:
    os.read(fd, 4096)
    ns += 1
    os.utime(path, ns=(ns, ns))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the other writer uses Linux inotify")
def test_a_file_that_keeps_changing_is_skipped_untouched_as_changed_during_write(jpg):
    """Every try sees the file changed after it read it: after a few tries the write gives up with
    the reason changed-during-write, and the file's bytes are the other program's."""
    before = jpg.read_bytes()
    other = subprocess.Popen(
        [sys.executable, "-c", _TOUCH_AFTER_EACH_READ, str(jpg)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "ready"
        with pytest.raises(MetadataError) as e:
            write_keywords(jpg, ["dog"])
    finally:
        other.kill()
        other.wait()
    assert e.value.reason == "changed-during-write"
    assert jpg.read_bytes() == before
    assert not [p for p in jpg.parent.iterdir() if p.name.endswith(".rtagx-tmp")]


def test_atomic_write_never_replaces_a_file_it_did_not_read(tmp_path):
    from rtagx.keywords.atomic import ChangedDuringWrite, FileState, atomic_write

    f = tmp_path / "side.xmp"
    f.write_text("theirs")  # rtagx saw no file; another program made one meanwhile
    with pytest.raises(ChangedDuringWrite):
        atomic_write(f, b"ours", expect=None)
    seen = FileState.at(f)
    f.write_text("theirs, edited")
    with pytest.raises(ChangedDuringWrite):
        atomic_write(f, b"ours", expect=seen)
    assert f.read_text() == "theirs, edited"
    atomic_write(f, b"ours", expect=FileState.at(f))
    assert f.read_text() == "ours"


def test_a_bigtiff_gets_a_sidecar_under_auto_and_is_never_rewritten(tmp_path: Path) -> None:
    """exiv2 cannot write into a BigTIFF (scans and GIS exports over 4 GB): ``auto`` writes a sidecar
    instead of skipping the photo, and ``--write embed`` says why it cannot."""
    path = tmp_path / "scan.tif"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, big_tiff=True)
    original = path.read_bytes()
    assert original[:4] == b"II+\x00"
    result = metadata.write_keywords(path, ["dog", "cat"])
    assert result.target == "sidecar" and result.written_to == tmp_path / "scan.tif.xmp"
    assert sorted(metadata.read_keywords(path).keywords) == ["cat", "dog"]
    assert path.read_bytes() == original
    with pytest.raises(MetadataError, match="BigTIFF"):
        metadata.write_keywords(path, ["dog"], target="embed")
    metadata.remove_own_keywords(path)
    assert metadata.read_keywords(path).keywords == [] and path.read_bytes() == original
