"""Shared machinery of the fault suite (tests/faults/) and of ``bench/faults.py``.

Everything here drives the real thing: ``python -m rtagx`` in subprocesses, real files made from the
camera samples and with Pillow, exiftool to read keywords back, SQLite's own integrity check. The
scenario functions return plain dicts of figures so that the tests can assert on them and the bench
can print them as a table.

Temporary names rtagx uses (checked as leftovers after every fault):

* ``.<photo name>.<random>.rtagx-tmp`` beside the photo or sidecar being written
  (``rtagx.keywords.atomic.atomic_write`` through ``tempfile.mkstemp``); exiv2 works on that copy.
* beside the cache: ``<cache>-wal`` and ``<cache>-shm`` (SQLite WAL mode, legitimate between runs)
  and ``<cache>.lock`` (the flock writer lock, legitimate). ``<cache>-journal`` would mean a rollback
  journal left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SAMPLES = Path(os.environ.get("RTAGX_SAMPLES") or REPO / "tests" / "data" / "camera-samples")

RTAGX = [sys.executable, "-m", "rtagx"]
TMP_SUFFIX = ".rtagx-tmp"
CACHE_COMPANIONS = ("-wal", "-shm", ".lock")
DEFAULT_KILLS = 50
VOCAB_A = "dog\ncat\nmountain\nbeach\ncar\nfood\n"
VOCAB_B = "tree\nhouse\nriver\nflower\nbird\nboat\n"
RUN_TIMEOUT = 120  # seconds: no single rtagx run may take longer (a hang is a failure)

# Camera samples of the kill library: many makers, orientation flags, GPS, Photoshop XMP, TIFF, HEIF.
CAMERA_JPEGS = [
    "Canon_40D.jpg",
    "Canon_40D_photoshop_import.jpg",
    "Canon_DIGITAL_IXUS_400.jpg",
    "Canon_PowerShot_S40.jpg",
    "Fujifilm_FinePix6900ZOOM.jpg",
    "Fujifilm_FinePix_E500.jpg",
    "Kodak_CX7530.jpg",
    "Konica_Minolta_DiMAGE_Z3.jpg",
    "Nikon_COOLPIX_P1.jpg",
    "Nikon_D70.jpg",
    "Olympus_C8080WZ.jpg",
    "PaintTool_sample.jpg",
    "Panasonic_DMC-FZ30.jpg",
    "Pentax_K10D.jpg",
    "Ricoh_Caplio_RR330.jpg",
    "Samsung_Digimax_i50_MP3.jpg",
    "Sony_HDR-HC3.jpg",
    "WWL_(Polaroid)_ION230.jpg",
    "long_description.jpg",
    "corrupted.jpg",
]
CAMERA_SUBDIRS = {
    "orientation": ["landscape_3.jpg", "landscape_6.jpg", "portrait_5.jpg", "portrait_8.jpg"],
    "gps": ["DSCN0010.jpg", "DSCN0021.jpg"],
    "xmp": ["BlueSquare.jpg", "no_exif.jpg"],
}


def fault_count(default: int = DEFAULT_KILLS) -> int:
    """N for the kill scenario: ``RTAGX_FAULT_KILLS`` scales it (CI default 50)."""
    try:
        return max(1, int(os.environ.get("RTAGX_FAULT_KILLS", default)))
    except ValueError:
        return default


# ----------------------------------------------------------------------------- environment


def clean_env(work: Path) -> dict[str, str]:
    """The environment of every rtagx subprocess: no user config, no user cache, no network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTAGX_")}
    env.update(
        RTAGX_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        RTAGX_NO_PROGRESS="1",
        XDG_CONFIG_HOME=str(work / "xdg-config"),
        XDG_DATA_HOME=str(work / "xdg-data"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def tiny_model(directory: Path) -> tuple[Path, Path]:
    """The suite's tiny CLIP (same builder as tests/conftest.py), for the bench."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from conftest import build_tiny_clip  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return build_tiny_clip(directory)


def tag_args(
    paths: Sequence[Path | str | bytes], model: tuple[Path, Path], cache: Path, vocab: Path, *extra: str
) -> list[Any]:
    cfg, ckpt = model
    return [
        *RTAGX,
        "tag",
        *[os.fspath(p) for p in paths],
        "--model",
        str(cfg),
        "--pretrained",
        str(ckpt),
        "--cache",
        str(cache),
        "--tags",
        str(vocab),
        "--threshold",
        "-1",
        "--top-k",
        "3",
        "--json",
        "--yes",
        "--workers",
        "1",
        "--threads",
        "1",
        *extra,
    ]


@dataclass
class RunResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    files: list[dict] = field(default_factory=list)
    summary: dict | None = None

    def by_name(self) -> dict[str, dict]:
        return {os.path.basename(f["path"]): f for f in self.files}

    def describe(self) -> str:
        return f"rc={self.rc}\n--- stdout (tail)\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def parse_output(stdout: str) -> tuple[list[dict], dict | None]:
    files, summary = [], None
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by SIGKILL
        if obj.get("summary"):
            summary = obj
        else:
            files.append(obj)
    return files, summary


def run_rtagx(args: Sequence[Any], work: Path, *, timeout: float = RUN_TIMEOUT, preexec_fn=None) -> RunResult:
    start = time.perf_counter()
    proc = subprocess.run(
        list(args), capture_output=True, env=clean_env(work), timeout=timeout, preexec_fn=preexec_fn, cwd=work
    )
    out = proc.stdout.decode("utf-8", "replace")
    files, summary = parse_output(out)
    return RunResult(
        proc.returncode, out, proc.stderr.decode("utf-8", "replace"), time.perf_counter() - start, files, summary
    )


def fsize_limit(limit: int):
    """preexec_fn: cap every file the child writes at ``limit`` bytes (a full disk, as EFBIG)."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


# ----------------------------------------------------------------------------- files


def _noise_image(rng: random.Random, size: tuple[int, int], mode: str = "RGB"):
    import numpy as np
    from PIL import Image

    w, h = size
    gen = np.random.default_rng(rng.randrange(2**32))
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    arr = np.clip(base * gen.uniform(0.3, 1.0, 3) + gen.normal(0, 40, (h, w, 3)), 0, 255).astype("uint8")
    im = Image.fromarray(arr, "RGB")
    return im.convert(mode) if mode != "RGB" else im


def make_generated(dest: Path, rng: random.Random, *, count_per_format: int = 2, big: bool = False) -> list[Path]:
    """JPEG (baseline with EXIF, progressive, grayscale), PNG (RGB, RGBA, palette), TIFF (raw, LZW),
    WebP (lossy, lossless) made with Pillow. ``big`` makes multi-megabyte files (disk-full scenario)."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []

    def size() -> tuple[int, int]:
        return (rng.randint(900, 1100), rng.randint(800, 1000)) if big else (rng.randint(48, 200), rng.randint(48, 200))

    for k in range(count_per_format):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0131] = "FaultCam", f"Model {k}", "rtagx fault suite"
        p = dest / f"gen_{k}_baseline.jpg"
        _noise_image(rng, size()).save(p, quality=95 if big else 85, exif=exif.tobytes())
        out.append(p)
        p = dest / f"gen_{k}_progressive.jpeg"
        _noise_image(rng, size()).save(p, quality=90, progressive=True)
        out.append(p)
        p = dest / f"gen_{k}_gray.jpg"
        _noise_image(rng, size(), "L").save(p, quality=80)
        out.append(p)
        for mode in ("RGB", "RGBA", "P"):
            p = dest / f"gen_{k}_{mode.lower()}.png"
            _noise_image(rng, size(), mode).save(p)
            out.append(p)
        p = dest / f"gen_{k}_raw.tif"
        _noise_image(rng, size()).save(p)
        out.append(p)
        p = dest / f"gen_{k}_lzw.tiff"
        _noise_image(rng, size()).save(p, compression="tiff_lzw")
        out.append(p)
        p = dest / f"gen_{k}_lossy.webp"
        _noise_image(rng, size()).save(p, quality=80)
        out.append(p)
        p = dest / f"gen_{k}_lossless.webp"
        _noise_image(rng, size()).save(p, lossless=True)
        out.append(p)
    for p in out:
        os.chmod(p, 0o644)
    return out


def copy_samples(
    dest: Path, names: Iterable[str] = CAMERA_JPEGS, *, subdirs: bool = True, tiff: bool = True, heif: bool = True
) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    pairs = [(SAMPLES / "jpg" / n, dest / n) for n in names]
    if subdirs:
        for sub, files in CAMERA_SUBDIRS.items():
            pairs += [(SAMPLES / "jpg" / sub / n, dest / sub / n) for n in files]
    if tiff:
        pairs += [(p, dest / "tiff" / p.name) for p in sorted((SAMPLES / "tiff").glob("*.tif*"))]
    if heif:
        pairs += [(p, dest / p.name) for p in sorted((SAMPLES / "heic").glob("*.hei*"))]
    out = []
    for src, dst in pairs:
        if not src.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
        out.append(dst)
    return out


def make_library(dest: Path, seed: int = 0, *, generated_per_format: int = 2) -> list[Path]:
    """The kill/concurrency library: real camera files plus Pillow-made JPEG/PNG/TIFF/WebP."""
    files = copy_samples(dest)
    files += make_generated(dest / "generated", random.Random(seed), count_per_format=generated_per_format)
    return sorted(files)


def image_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            if n.startswith(".") or n.lower().endswith(".xmp"):
                continue
            out.append(Path(dirpath) / n)
    return out


def uses_sidecar(path: Path) -> bool:
    return path.suffix.lower() in (".heic", ".heif", ".hif", ".avif")


@dataclass(frozen=True)
class Snap:
    pixels: str | None  # digest of the decoded pixels, None when the file does not decode
    raw: str  # digest of the bytes


def pixel_digest(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            h = hashlib.blake2b(f"{im.mode}|{im.size}|{getattr(im, 'n_frames', 1)}".encode(), digest_size=16)
            h.update(im.tobytes())
            return h.hexdigest()
    except Exception:
        return None


def snapshot(paths: Iterable[Path]) -> dict[Path, Snap]:
    out = {}
    for p in paths:
        data = p.read_bytes()
        out[p] = Snap(pixel_digest(p), hashlib.blake2b(data, digest_size=16).hexdigest())
    return out


def damaged(before: dict[Path, Snap], *, strict_bytes: Iterable[Path] = ()) -> list[str]:
    """Files whose pixels differ from ``before`` (undecodable originals: whose bytes differ)."""
    strict = set(strict_bytes)
    problems = []
    for p, snap in before.items():
        if not p.exists():
            problems.append(f"{p}: missing")
            continue
        if snap.pixels is None or p in strict:
            raw = hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            if raw != snap.raw:
                problems.append(f"{p}: bytes changed")
            continue
        now = pixel_digest(p)
        if now != snap.pixels:
            problems.append(f"{p}: pixels changed" if now else f"{p}: no longer decodes")
    return problems


# ----------------------------------------------------------------------------- keywords via exiftool


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [_text(x) for x in v]
    return [_text(v)]


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _ExifTool:
    """One ``exiftool -stay_open`` process (perl starts once, not once per check)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["exiftool", "-stay_open", "True", "-@", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def run(self, args: Sequence[str]) -> bytes:
        if any("\n" in a for a in args):
            raise ValueError("exiftool argument files cannot hold a newline; read such files through a link")
        text = "\n".join([*args, "-execute", ""])
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(text.encode("utf-8", "surrogateescape"))
        self.proc.stdin.flush()
        out = bytearray()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("exiftool exited")
            if line.rstrip(b"\r\n") == b"{ready}":
                return bytes(out)
            out += line

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(["-stay_open", "False"])
        self.proc.kill()
        self.proc.wait()


_EXIFTOOLS = threading.local()
_ALL_EXIFTOOLS: list[_ExifTool] = []


def _exiftool() -> _ExifTool:
    tool = getattr(_EXIFTOOLS, "tool", None)
    if tool is None or tool.proc.poll() is not None:
        tool = _EXIFTOOLS.tool = _ExifTool()
        _ALL_EXIFTOOLS.append(tool)
    return tool


atexit.register(lambda: [t.close() for t in _ALL_EXIFTOOLS])


def exiftool_json(paths: Sequence[Path], tags: Sequence[str]) -> list[dict]:
    """exiftool -j for many files in one go; numbers are kept as their exact text (parse_* = str)."""
    if not paths:
        return []
    out = _exiftool().run(["-charset", "filename=utf8", "-j", "-G1", "-a", *tags, *(os.fsdecode(p) for p in paths)])
    if not out.strip():
        raise RuntimeError(f"exiftool printed nothing for {[str(p) for p in paths][:3]}...")
    data = json.loads(out.decode("utf-8", "replace"), parse_int=str, parse_float=str)
    if len(data) != len(paths):
        raise RuntimeError(f"exiftool answered for {len(data)} of {len(paths)} files")
    return data


@dataclass(frozen=True)
class KwState:
    iptc: tuple[str, ...]
    xmp: tuple[str, ...]
    sidecar: tuple[str, ...] | None  # None: no sidecar file
    error: str | None = None

    def key(self) -> tuple:
        """Order-free identity of the keyword state (the order of a Bag carries no meaning)."""
        return (
            tuple(sorted(self.iptc)),
            tuple(sorted(self.xmp)),
            None if self.sidecar is None else tuple(sorted(self.sidecar)),
        )

    def duplicates(self) -> list[str]:
        out = []
        for name, vals in (("iptc", self.iptc), ("xmp", self.xmp), ("sidecar", self.sidecar or ())):
            if len(set(vals)) != len(vals):
                out.append(f"{name} holds duplicates: {list(vals)}")
        return out


def keyword_states(paths: Sequence[Path]) -> dict[Path, KwState]:
    tags = ["-IPTC:Keywords", "-XMP-dc:Subject", "-Error"]
    sidecars = {p: Path(os.fsdecode(p) + ".xmp") for p in paths if uses_sidecar(p)}
    present = [s for s in sidecars.values() if s.exists()]
    rows = exiftool_json([*paths, *present], tags)
    side_rows = dict(zip(present, rows[len(paths) :]))
    out = {}
    for p, row in zip(paths, rows):
        side = None
        s = sidecars.get(p)
        if s is not None and s in side_rows:
            side = tuple(_as_list(side_rows[s].get("XMP-dc:Subject")))
        out[p] = KwState(
            tuple(_as_list(row.get("IPTC:Keywords"))),
            tuple(_as_list(row.get("XMP-dc:Subject"))),
            side,
            row.get("ExifTool:Error"),
        )
    return out


# ----------------------------------------------------------------------------- cache and leftovers


def cache_integrity(cache: Path) -> str:
    """'ok', 'absent', or what is wrong: the store opened the way rtagx opens it, then integrity_check."""
    if not cache.exists():
        return "absent"
    from rtagx.cache.store import open_store

    try:
        with open_store(cache) as store:
            return "ok" if store.integrity_ok() else str(store.conn.execute("PRAGMA integrity_check").fetchall())
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def leftovers(folder: Path, expected: set[Path]) -> list[Path]:
    """Files under ``folder`` that are neither originals nor the sidecars rtagx is meant to write."""
    extra = []
    for dirpath, _dirs, names in os.walk(folder):
        for n in names:
            p = Path(dirpath) / n
            if p in expected:
                continue
            if n.lower().endswith(".xmp") and Path(os.fsdecode(p)[:-4]) in expected:
                continue
            extra.append(p)
    return sorted(extra)


def cache_leftovers(cache: Path) -> list[Path]:
    ok = {cache.name, *(cache.name + s for s in CACHE_COMPANIONS)}
    return sorted(p for p in cache.parent.iterdir() if p.name.startswith(cache.name) and p.name not in ok)


def rtagx_temps(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.name.endswith(TMP_SUFFIX)]


# ----------------------------------------------------------------------------- scenario 1: kill -9


def _phase(out: str, total: int) -> str:
    files, summary = parse_output(out)
    if summary is not None:
        return "after-summary"
    if not files:
        return "startup"  # imports, model load, prompts, first decode/encode batch
    return "writing" if len(files) < total else "after-writes"


LIBRARY_SEED = 0


def write_vocabs(work: Path) -> list[Path]:
    work.mkdir(parents=True, exist_ok=True)
    vocabs = [work / "vocab-a.txt", work / "vocab-b.txt"]
    vocabs[0].write_text(VOCAB_A)
    vocabs[1].write_text(VOCAB_B)
    return vocabs


def reference_runs(work: Path, model: tuple[Path, Path]) -> tuple[list[dict[Path, KwState]], float]:
    """Keyword states (by path relative to the library) after complete runs with each vocabulary, and
    how long a typical kill-loop run takes (vectors cached, every file's keywords rewritten).

    Two copies at once (the CPU contention of two kill lanes): one runs vocabulary A then B, the other
    B then A, each with its own cache. The states after A (and after B) must agree between the copies
    (orig -> A and B -> A give the same set); the second runs time the loop."""
    from concurrent.futures import ThreadPoolExecutor

    vocabs = write_vocabs(work)

    def one(i: int) -> tuple[list[dict[Path, KwState]], float]:
        lib = work / f"ref{i}"
        files = make_library(lib, LIBRARY_SEED)
        states: list[dict[Path, KwState]] = [{}, {}]
        seconds = 0.0
        for v in (i, 1 - i):
            r = run_rtagx(tag_args([lib], model, work / f"ref{i}.sqlite3", vocabs[v]), work)
            if r.rc not in (0, 3) or not r.summary:
                raise RuntimeError(f"reference run failed: {r.describe()}")
            states[v] = {p.relative_to(lib): s for p, s in keyword_states(files).items()}
            seconds = r.seconds
        return states, seconds

    with ThreadPoolExecutor(2) as pool:
        (s0, t0), (s1, t1) = pool.map(one, range(2))
    for v in range(2):
        differ = [str(k) for k in s0[v] if s0[v][k].key() != s1[v][k].key()]
        if differ:
            raise RuntimeError(f"complete runs disagree on the keywords of {differ} (vocabulary {'AB'[v]})")
    return s0, max(t0, t1)


def kill_scenario(
    work: Path,
    model: tuple[Path, Path],
    kills: int,
    seed: int = 1234,
    log=lambda *_: None,
    mode: str = "uniform",
    reference: tuple[list[dict[Path, KwState]], float] | None = None,
) -> dict[str, Any]:
    """SIGKILL ``rtagx tag`` ``kills`` times at seeded random moments spread over a full run, rerunning
    each time with the other vocabulary (so every run rewrites keywords), then run to completion.
    ``mode="midwrite"`` kills right after a random number of files were reported instead (the write phase
    is short next to the ~3 s of imports, so uniform delays mostly land before the first write).

    After every kill: pixels identical, each file's keywords are its original set or one of the two sets
    a complete run gives (IPTC and XMP the same set, no duplicates, exiftool reads the file), the cache
    passes integrity_check, and no files other than originals and sidecars exist.
    """
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    lib = work / "lib"
    files = make_library(lib, LIBRARY_SEED)
    vocabs = write_vocabs(work)
    cache = work / "cache.sqlite3"
    before = snapshot(files)
    original = keyword_states(files)
    if reference is None:
        reference = reference_runs(work / "reference", model)
    ref_by_rel, full = reference
    ref_states = [{p: states[p.relative_to(lib)] for p in files} for states in ref_by_rel]

    stats: dict[str, Any] = {
        "kills": 0,
        "finished_before_kill": 0,
        "fresh_caches": 0,
        "phases": {},
        "checks": 0,
        "damaged": [],
        "bad_keywords": [],
        "bad_cache": [],
        "leftovers_seen": 0,
        "leftover_names": set(),
        "unknown_leftovers": [],
        "files": len(files),
        "run_seconds": full,
    }
    expected_names = set(files)
    for i in range(kills):
        vocab = vocabs[i % 2]
        if i % 10 == 9:  # now and then a new cache: kills then also land in its creation and in embedding
            for p in [cache, *(Path(str(cache) + s) for s in CACHE_COMPANIONS)]:
                p.unlink(missing_ok=True)
            stats["fresh_caches"] = stats.get("fresh_caches", 0) + 1
        delay = rng.uniform(0.0, full * 1.05)
        proc = subprocess.Popen(
            tag_args([lib], model, cache, vocab),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(work),
            cwd=work,
        )
        head = b""
        if mode == "midwrite":  # kill right after the k-th file is reported, k random
            k = rng.randint(1, len(files) - 2)
            delay = rng.uniform(0.0, 0.004)
            seen = 0
            while seen < k:
                line = proc.stdout.readline()
                if not line:
                    break
                head += line
                seen += line.startswith(b'{"path"')
            time.sleep(delay)
        try:
            proc.wait(timeout=delay if mode != "midwrite" else 0.0001)
            stats["finished_before_kill"] += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            stats["kills"] += 1
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
        out = head + out
        phase = _phase(out.decode("utf-8", "replace"), len(files))
        stats["phases"][phase] = stats["phases"].get(phase, 0) + 1
        if proc.returncode not in (0, 3, -signal.SIGKILL):
            stats["damaged"].append(f"kill {i}: rtagx exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
        # checks
        stats["checks"] += 1
        for problem in damaged(before):
            stats["damaged"].append(f"kill {i} ({phase}, {delay:.2f}s): {problem}")
        states = keyword_states(files)
        for p in files:
            s = states[p]
            allowed = {original[p].key(), ref_states[0][p].key(), ref_states[1][p].key()}
            if s.key() not in allowed:
                stats["bad_keywords"].append(
                    f"kill {i} ({phase}, {delay:.2f}s): {p.name}: {s} not in "
                    f"{{original {original[p]}, A {ref_states[0][p]}, B {ref_states[1][p]}}}"
                )
            for d in s.duplicates():
                stats["bad_keywords"].append(f"kill {i}: {p.name}: {d}")
            if s.error and not original[p].error:
                stats["damaged"].append(f"kill {i}: {p.name}: exiftool: {s.error}")
        integrity = cache_integrity(cache)
        if integrity not in ("ok", "absent"):
            stats["bad_cache"].append(f"kill {i} ({phase}, {delay:.2f}s): {integrity}")
        extra = leftovers(lib, expected_names)
        if extra:
            stats["leftovers_seen"] += len(extra)
            stats["leftover_names"].update(p.name for p in extra)
            unknown = [p for p in extra if not p.name.endswith(TMP_SUFFIX)]
            if unknown:
                stats["unknown_leftovers"].append(f"kill {i}: {[str(p) for p in unknown]}")
        log(f"kill {i + 1}/{kills}: {delay:.2f}s -> {phase}; leftovers {len(extra)}")

    # Final: complete runs; the second must find nothing to do.
    final_vocab = kills % 2
    r1 = run_rtagx(tag_args([lib], model, cache, vocabs[final_vocab]), work)
    r2 = run_rtagx(tag_args([lib], model, cache, vocabs[final_vocab]), work)
    stats["final_rc"] = (r1.rc, r2.rc)
    stats["final_summaries"] = (r1.summary, r2.summary)
    stats["final_describe"] = r1.describe() + "\n" + r2.describe()
    final_states = keyword_states(files)
    stats["final_mismatch"] = [
        f"{p.name}: {final_states[p]} != {ref_states[final_vocab][p]}"
        for p in files
        if final_states[p].key() != ref_states[final_vocab][p].key() or final_states[p].duplicates()
    ]
    for problem in damaged(before):
        stats["damaged"].append(f"after final run: {problem}")
    stats["final_cache"] = [cache_integrity(cache)]
    stats["leftovers_after_final"] = [str(p) for p in leftovers(lib, expected_names)]
    stats["cache_leftovers"] = [str(p) for p in cache_leftovers(cache)]
    return stats


def targeted_tmp_kill(work: Path, model: tuple[Path, Path], tries: int = 6) -> dict[str, Any]:
    """Kill rtagx exactly while one of its ``.rtagx-tmp`` files exists (SIGSTOP as soon as one is seen,
    SIGKILL while stopped), then run again to completion and see whether the temp file is gone."""
    lib = work / "lib"
    files = copy_samples(lib, CAMERA_JPEGS[:12], subdirs=False, tiff=False, heif=False)
    files += make_generated(lib / "generated", random.Random(7), count_per_format=2)
    vocabs = [work / "vocab-a.txt", work / "vocab-b.txt"]
    vocabs[0].write_text(VOCAB_A)
    vocabs[1].write_text(VOCAB_B)
    cache = work / "cache.sqlite3"
    before = snapshot(files)
    result: dict[str, Any] = {
        "caught": 0,
        "tries": 0,
        "left_after_kill": [],
        "left_after_rerun": [],
        "damaged": [],
        "cache": None,
    }
    folders = sorted({p.parent for p in files})
    for t in range(tries):
        result["tries"] += 1
        proc = subprocess.Popen(
            tag_args([lib], model, cache, vocabs[t % 2]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(work),
            cwd=work,
        )
        caught = None
        deadline = time.monotonic() + RUN_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            for folder in folders:
                try:
                    names = os.listdir(folder)
                except OSError:
                    continue
                tmp = [n for n in names if n.endswith(TMP_SUFFIX)]
                if tmp:
                    proc.send_signal(signal.SIGSTOP)
                    if any(os.path.exists(folder / n) for n in tmp):
                        caught = [folder / n for n in tmp if os.path.exists(folder / n)]
                        proc.send_signal(signal.SIGKILL)
                    else:
                        proc.send_signal(signal.SIGCONT)
                    break
            if caught:
                break
        if proc.poll() is None and not caught:
            proc.kill()
        proc.communicate(timeout=RUN_TIMEOUT)
        if caught:
            result["caught"] += 1
            result["left_after_kill"] += [str(p) for p in caught]
            break
    result["damaged"] = damaged(before)
    # the next complete run (same vocabulary as the killed one, so it has the same writes to finish)
    r = run_rtagx(tag_args([lib], model, cache, vocabs[(result["tries"] - 1) % 2]), work)
    result["rerun_rc"] = r.rc
    result["rerun_describe"] = r.describe()
    result["left_after_rerun"] = [str(p) for p in leftovers(lib, set(files))]
    result["damaged"] += damaged(before)
    result["cache"] = cache_integrity(cache)
    return result


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v if not isinstance(v, (list, set, dict)) else type(v)(v)
            elif isinstance(v, bool) or k == "run_seconds":
                out[k] = max(out[k], v) if k == "run_seconds" else v
            elif isinstance(v, (int, float, list)):
                out[k] += v
            elif isinstance(v, set):
                out[k] |= v
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    out[k][kk] = out[k].get(kk, 0) + vv
            elif isinstance(v, (tuple, str)):
                out[k] = out[k] + v
            else:
                out[k] = v
    return out


def kill_lanes(
    work: Path,
    model: tuple[Path, Path],
    kills: int,
    *,
    lanes: int = 2,
    seed: int = 1234,
    mode: str = "uniform",
    log=lambda *_: None,
) -> dict[str, Any]:
    """``kill_scenario`` on ``lanes`` independent libraries and caches at once (the wall time of the
    suite is mostly rtagx importing torch; two lanes keep 50 kills inside the CI budget)."""
    from concurrent.futures import ThreadPoolExecutor

    lanes = max(1, min(lanes, kills))
    reference = reference_runs(work / "reference", model)
    log(f"reference runs: a typical run (vectors cached, keywords rewritten) took {reference[1]:.1f}s")
    shares = [kills // lanes + (1 if i < kills % lanes else 0) for i in range(lanes)]
    with ThreadPoolExecutor(lanes) as pool:
        futures = [
            pool.submit(kill_scenario, work / f"lane{i}", model, n, seed + i, log, mode, reference)
            for i, n in enumerate(shares)
        ]
        return merge_stats([f.result() for f in futures])


# ----------------------------------------------------------------------------- scenario 2: disk full


def disk_full_photos(work: Path, model: tuple[Path, Path], limit: int = 2 << 20, seed: int = 3) -> dict[str, Any]:
    """RLIMIT_FSIZE below the size of some photos: their writes fail (EFBIG), the others go through.

    The limit binds every file the process writes, the cache too, so the cache is filled first by a
    ``--write none`` run without the limit: the limited run then only adds a few rows to it."""
    lib = work / "lib"
    files = copy_samples(lib, CAMERA_JPEGS[:8], subdirs=False, tiff=True, heif=False)
    files += make_generated(lib / "big", random.Random(seed), count_per_format=1, big=True)
    vocab = work / "vocab.txt"
    vocab.write_text(VOCAB_A)
    before = snapshot(files)
    raw_before = {p: p.read_bytes() for p in files}
    cache = work / "cache.sqlite3"
    warm = run_rtagx(tag_args([lib], model, cache, vocab, "--write", "none"), work)
    if warm.rc != 0 or any(p.read_bytes() != raw_before[p] for p in files):
        raise RuntimeError(f"--write none run failed or wrote: {warm.describe()}")
    r = run_rtagx(tag_args([lib], model, cache, vocab), work, preexec_fn=fsize_limit(limit))
    by_path = {Path(f["path"]): f for f in r.files}
    out: dict[str, Any] = {
        "rc": r.rc,
        "run": r,
        "files": len(files),
        "faults": 0,
        "damaged": damaged(before),
        "cache_size": cache.stat().st_size,
        "limit": limit,
        "problems": [],
        "over_limit": [],
        "leftovers": leftovers(lib, set(files)),
    }
    for p in files:
        f = by_path.get(p)
        if f is None:
            out["problems"].append(f"{p.name}: no JSON line")
            continue
        if f["action"] == "skipped":
            out["faults"] += 1
            if f["reason"] != "write-failed" or "too large" not in (f.get("detail") or "").lower():
                out["problems"].append(f"{p.name}: skipped as {f['reason']!r}: {f.get('detail')!r}")
            if p.read_bytes() != raw_before[p]:
                out["damaged"].append(f"{p.name}: skipped but its bytes changed")
        elif f["action"] != "written":
            out["problems"].append(f"{p.name}: action {f['action']!r}")
        if len(raw_before[p]) > limit:
            out["over_limit"].append(p)
            if f and f["action"] != "skipped":
                out["problems"].append(f"{p.name}: {len(raw_before[p])} bytes > limit {limit} yet {f['action']}")
    return out


def disk_full_cache(work: Path, model: tuple[Path, Path]) -> dict[str, Any]:
    """The cache's disk fills up: (a) mid-run (RLIMIT_FSIZE = the cache's size after a warm-up run, so the
    database cannot grow), (b) before the cache can even be created (limit 0). Then a run without the
    limit must recover."""
    lib = work / "lib"
    files = copy_samples(lib, [n for n in CAMERA_JPEGS if n != "corrupted.jpg"], subdirs=True, tiff=False, heif=False)
    files += make_generated(lib / "generated", random.Random(5), count_per_format=1)
    warm = work / "warm"
    copy_samples(warm, ["Canon_40D.jpg"], subdirs=False, tiff=False, heif=False)
    vocab = work / "vocab.txt"
    vocab.write_text(VOCAB_A)
    cache_dir = work / "cache"
    cache_dir.mkdir()
    cache = cache_dir / "c.sqlite3"
    before = snapshot(files)
    warm_run = run_rtagx(tag_args([warm], model, cache, vocab), work)
    size = cache.stat().st_size
    mid = run_rtagx(tag_args([lib], model, cache, vocab, "--batch-size", "1"), work, preexec_fn=fsize_limit(size))
    after_mid = damaged(before)
    integrity_mid = cache_integrity(cache)
    fresh = work / "fresh-cache" / "c.sqlite3"
    fresh.parent.mkdir()
    start = run_rtagx(tag_args([lib], model, fresh, vocab), work, preexec_fn=fsize_limit(0))
    after_start = damaged(before)
    recover = run_rtagx(tag_args([lib], model, cache, vocab), work)
    again = run_rtagx(tag_args([lib], model, cache, vocab), work)
    return {
        "warm": warm_run,
        "limit": size,
        "mid": mid,
        "start": start,
        "recover": recover,
        "again": again,
        "damaged": after_mid + after_start + damaged(before),
        "cache_mid": integrity_mid,
        "cache_final": cache_integrity(cache),
        "files": len(files),
        "leftovers": leftovers(lib, set(files)),
        "cache_leftovers": cache_leftovers(cache),
    }


def one_line_error(stderr: str) -> str | None:
    """The single ``rtagx: error: ...`` line of a failed run, or None when stderr is anything else."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if len(lines) != 1 or not lines[0].startswith("rtagx: error: ") or "Traceback" in stderr:
        return None
    return lines[0]


# ----------------------------------------------------------------------------- scenario 3: concurrency


CORRUPT_REASONS = {"corrupt", "truncated"}


def concurrency_reference(work: Path, model: tuple[Path, Path], seed: int = 11) -> dict[Path, KwState]:
    """Keyword states (by relative path) after one single complete run over the concurrency library."""
    lib = work / "lib"
    files = make_library(lib, seed, generated_per_format=1)
    vocab = work / "vocab.txt"
    vocab.write_text(VOCAB_A)
    r = run_rtagx(tag_args([lib], model, work / "ref-cache.sqlite3", vocab), work)
    if r.rc not in (0, 3) or not r.summary:
        raise RuntimeError(f"reference run failed: {r.describe()}")
    return {p.relative_to(lib): s for p, s in keyword_states(files).items()}


def concurrency_scenario(
    work: Path,
    model: tuple[Path, Path],
    procs: int,
    *,
    shared_cache: bool = True,
    seed: int = 11,
    reference: dict[Path, KwState] | None = None,
    precreate: bool = False,
) -> dict[str, Any]:
    """``procs`` ``rtagx tag`` processes started at once on overlapping folders, with one cache (or, with
    ``shared_cache=False``, one cache each: no lock between them, the photo writes themselves race).
    ``precreate`` creates the cache first (a new cache hits the first-open race of rtagx.store)."""
    lib = work / "lib"
    files = make_library(lib, seed, generated_per_format=1)
    vocab = work / "vocab.txt"
    vocab.write_text(VOCAB_A)
    before = snapshot(files)
    if reference is None:
        reference = concurrency_reference(work / "reference", model, seed)
    expected = {p: reference[p.relative_to(lib)] for p in files}
    sets = [
        [lib],
        [lib / "generated", lib / "orientation", lib / "gps"],
        [lib / "xmp", lib / "generated", lib / "tiff"],
        [lib / "orientation", lib / "tiff", lib],
    ]
    if precreate:  # an existing, migrated, empty cache: what a later day's concurrent runs find
        from rtagx.cache.store import open_store

        for i in range(procs if not shared_cache else 1):
            with open_store(work / ("cache.sqlite3" if shared_cache else f"cache{i}.sqlite3")):
                pass
    launched = []
    for i in range(procs):
        cache = work / ("cache.sqlite3" if shared_cache else f"cache{i}.sqlite3")
        launched.append(
            subprocess.Popen(
                tag_args(sets[i % len(sets)], model, cache, vocab),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(work),
                cwd=work,
            )
        )
    results = []
    for proc in launched:
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            err += b"\n(fault suite: timed out, killed)"
        text = out.decode("utf-8", "replace")
        fl, summary = parse_output(text)
        results.append(RunResult(proc.returncode, text, err.decode("utf-8", "replace"), 0.0, fl, summary))
    problems = []
    for i, res in enumerate(results):
        if "database is locked" in res.stderr or "Traceback" in res.stderr or "internal error" in res.stderr:
            problems.append(f"process {i}: {res.stderr[-800:]}")
        if res.rc not in (0, 3) or res.summary is None:
            problems.append(f"process {i}: exit {res.rc}\n{res.describe()}")
        elif res.rc == 3:
            bad = {
                f["path"]: f["reason"]
                for f in res.files
                if f["action"] == "skipped"
                and not (f["reason"] in CORRUPT_REASONS and f["path"].endswith("corrupted.jpg"))
            }
            if bad:
                problems.append(f"process {i}: skipped {bad}")
    states = keyword_states(files)
    mismatch = [
        f"{p.name}: {states[p]} != single run {expected[p]}"
        for p in files
        if states[p].key() != expected[p].key() or states[p].duplicates()
    ]
    caches = [work / "cache.sqlite3"] if shared_cache else [work / f"cache{i}.sqlite3" for i in range(procs)]
    return {
        "procs": procs,
        "rcs": [res.rc for res in results],
        "results": results,
        "problems": problems,
        "mismatch": mismatch,
        "damaged": damaged(before),
        "files": len(files),
        "cache": [cache_integrity(c) for c in caches],
        "leftovers": leftovers(lib, set(files)),
    }


# ----------------------------------------------------------------------------- scenario 4: hostile inputs

TRUNCATED_OK = {"truncated", "corrupt", "not-an-image", "empty", "unsupported-format"}
GARBAGE_OK = {"not-an-image", "corrupt", "truncated", "unsupported-format"}


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` gray pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" + b"\x00" * width, 9) if width <= 100_000 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def make_hostile(dest: Path, seed: int = 99) -> dict[Path, set[str] | str]:
    """A folder of hostile inputs. Returns path -> allowed skip reasons, or "written" / "written-or-skip"
    (a cut that only loses the end-of-image marker may still decode: then it must be written intact)."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    expect: dict[Path, set[str] | str] = {}
    for name in ("Canon_40D.jpg", "Nikon_D70.jpg"):
        data = (SAMPLES / "jpg" / name).read_bytes()
        n = len(data)
        cuts = sorted(
            {
                1,
                2,
                3,
                4,
                6,
                20,
                200,
                600,
                n // 8,
                n // 4,
                n // 3,
                n // 2,
                2 * n // 3,
                3 * n // 4,
                7 * n // 8,
                n - 200,
                n - 20,
                n - 3,
                *(rng.randrange(1, n - 2) for _ in range(6)),
            }
        )
        for cut in cuts:
            p = dest / "truncated" / f"{Path(name).stem}_cut{cut:06d}.jpg"
            p.parent.mkdir(exist_ok=True)
            p.write_bytes(data[:cut])
            expect[p] = set(TRUNCATED_OK)
        p = dest / "truncated" / f"{Path(name).stem}_no_eoi.jpg"
        p.write_bytes(data[:-2])
        expect[p] = "written-or-skip"
    for ext in (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".JPG"):
        p = dest / "garbage" / f"random{ext}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rng.randbytes(rng.randint(10, 5000)))
        expect[p] = set(GARBAGE_OK)
    for magic, ext in (
        (b"\xff\xd8\xff\xe0", ".jpg"),
        (b"\x89PNG\r\n\x1a\n", ".png"),
        (b"II*\x00", ".tif"),
        (b"RIFF\x00\x10\x00\x00WEBPVP8 ", ".webp"),
    ):
        p = dest / "garbage" / f"magic_then_noise{ext}"
        p.write_bytes(magic + rng.randbytes(3000))
        expect[p] = set(GARBAGE_OK)
    p = dest / "bomb" / "bomb_30000x30000.png"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(bomb_png())
    expect[p] = {"too-large"}
    for name in ("empty.jpg", "empty.png", "empty.tif", "empty.webp"):
        p = dest / "empty" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"")
        expect[p] = {"empty"}
    return expect


def skip_problems(result: RunResult, expect: dict[Path, set[str] | str]) -> list[str]:
    """Every hostile file got exactly one JSON line with an allowed outcome and a reason with detail."""
    problems = []
    by_path: dict[str, list[dict]] = {}
    for f in result.files:
        by_path.setdefault(f["path"], []).append(f)
    for p, allowed in expect.items():
        key = os.fsdecode(p).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        got = by_path.get(key, [])
        if len(got) != 1:
            problems.append(f"{p}: {len(got)} JSON lines")
            continue
        f = got[0]
        if allowed in ("written", "written-or-skip"):
            if f["action"] == "written" or (
                allowed == "written-or-skip" and f["action"] == "skipped" and f["reason"] in TRUNCATED_OK
            ):
                continue
            problems.append(f"{p.name}: expected written, got {f}")
        elif f["action"] != "skipped" or f.get("reason") not in allowed or not f.get("detail"):
            problems.append(f"{p.name}: expected a skip as {sorted(allowed)}, got {f}")
    return problems


# ----------------------------------------------------------------------------- scenario 5: keyword fuzzing

IPTC_MAX = 64
EDGE_KEYWORDS = [
    "é" * 32,
    "é" * 31 + "a",
    "a" + "é" * 32,
    "x" * 63 + "é",
    "x" * 62 + "€",
    "x" * 61 + "😀",
    "x" * 60 + "😀",
    "a|b",
    "a/b",
    "a,b",
    "a;b",
    "a\\b",
    "<tag>",
    "&amp;",
    "]]>",
    "'\"",
    "a\tb",
    "a\nb",
    "\x00",
    "\x7f",
    "\u0085",
    "\ufeffbom",
    "\u200b",
    "\u2028",
    " padded ",
    "\u00a0",
    "1",
    "007",
    "1.50",
    "1e5",
    "TRUE",
    "null",
]


def _bad_keyword(k: str) -> bool:
    """Keywords a careful writer must refuse: empty after trimming, control characters, non-characters,
    lone surrogates, or the hierarchy separator '|'."""
    import unicodedata

    s = k.strip()
    if not s or "|" in s:
        return True
    return any(
        unicodedata.category(c) in ("Cc", "Cs") or (ord(c) & 0xFFFE) == 0xFFFE or 0xFDD0 <= ord(c) <= 0xFDEF for c in s
    )


def _exif_text(value: str) -> str:
    """exiftool -j prints 'true'/'false' unquoted whatever their case: compare those case-blind."""
    return value.lower() if value.lower() in ("true", "false") else value


def keyword_roundtrip(path: Path, keywords: Sequence[str]) -> tuple[str, list[str]]:
    """Write ``keywords`` with rtagx.keywords.metadata.write_keywords, read back with exiftool.
    Returns ("written" | "rejected", problems)."""
    from rtagx.errors import FileSkip
    from rtagx.keywords.metadata import write_keywords

    raw = path.read_bytes()
    pixels = pixel_digest(path)
    problems: list[str] = []
    try:
        write_keywords(path, list(keywords), mode="replace-all")
    except FileSkip as e:
        if path.read_bytes() != raw:
            problems.append("rejected but the file changed")
        if e.reason != "bad-keyword" or not e.detail:
            problems.append(f"rejected as {e.reason!r}: {e.detail!r}")
        if not any(_bad_keyword(k) for k in keywords):
            problems.append(f"rejected keywords with nothing wrong in them: {e.reason}: {e.detail}")
        return "rejected", problems
    if any(_bad_keyword(k) for k in keywords):
        problems.append(f"accepted {[k for k in keywords if _bad_keyword(k)]!r}")
    expected: list[str] = []
    for k in keywords:
        if k.strip() not in expected:
            expected.append(k.strip())
    state = keyword_states([path])[path]
    if state.error:
        problems.append(f"exiftool: {state.error}")
    if [_exif_text(x) for x in state.xmp] != [_exif_text(x) for x in expected]:
        problems.append(f"XMP {list(state.xmp)!r} != {expected!r}")
    want_iptc: list[str] = []
    for k in expected:
        cut = k.encode("utf-8")[:IPTC_MAX].decode("utf-8", "ignore")
        if cut not in want_iptc:
            want_iptc.append(cut)
    if [_exif_text(x) for x in state.iptc] != [_exif_text(x) for x in want_iptc]:
        problems.append(f"IPTC {list(state.iptc)!r} != {want_iptc!r}")
    if pixel_digest(path) != pixels:
        problems.append("pixels changed")
    return "written", problems


def fuzz_keywords(work: Path, examples: int, seed: int = 5) -> dict[str, Any]:
    """Seeded random keyword lists (the bench's version of the hypothesis test)."""
    rng = random.Random(seed)
    pools = [
        lambda: "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 70))),
        lambda: "".join(chr(rng.randint(0xA0, 0x2FFF)) for _ in range(rng.randint(1, 40))),
        lambda: "".join(
            chr(rng.choice([rng.randint(0x1F300, 0x1FAFF), rng.randint(0x4E00, 0x9FFF)]))
            for _ in range(rng.randint(1, 30))
        ),
        lambda: rng.choice(EDGE_KEYWORDS),
        lambda: rng.choice(["x" * n + "é" for n in range(60, 66)] + ["é" * n for n in range(30, 34)]),
        lambda: rng.choice(["a", "b"]) + rng.choice("|/,;\t\n\x01\x1f ") + rng.choice(["c", "d"]),
    ]
    src = SAMPLES / "jpg" / "Canon_40D.jpg"
    work.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"examples": 0, "written": 0, "rejected": 0, "problems": []}
    for i in range(examples):
        kws = [rng.choice(pools)() for _ in range(rng.randint(1, 5))]
        target = work / f"fuzz{i % 4}.jpg"
        shutil.copyfile(src, target)
        outcome, problems = keyword_roundtrip(target, kws)
        stats["examples"] += 1
        stats[outcome] += 1
        stats["problems"] += [f"{kws!r}: {p}" for p in problems]
    return stats


_OPEN_STORE = """
import sys, time
from rtagx.errors import CacheError
from rtagx.cache.store import open_store
go = float(sys.argv[2])
while time.time() < go:
    time.sleep(0.0005)
try:
    with open_store(sys.argv[1]) as store:
        print("ok" if store.integrity_ok() else "integrity check failed")
except CacheError as e:
    print(f"CacheError: {e}")
"""


def first_open_race(work: Path, procs: int = 6, reps: int = 3) -> list[str]:
    """``procs`` processes open the same new cache at the same instant (rtagx.cache.store.open_store, what
    every command does before taking the writer lock). Returns what went wrong."""
    work.mkdir(parents=True, exist_ok=True)
    problems = []
    for rep in range(reps):
        cache = work / f"race{rep}.sqlite3"
        go = time.time() + 1.0 + 0.1 * procs
        launched = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_STORE, str(cache), repr(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(work),
                cwd=REPO,
            )
            for _ in range(procs)
        ]
        for proc in launched:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            text = out.decode(errors="replace").strip()
            if proc.returncode != 0 or text != "ok":
                problems.append(f"try {rep}: exit {proc.returncode}: {text or err.decode(errors='replace')[-300:]}")
    return problems
