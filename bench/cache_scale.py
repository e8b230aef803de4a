"""The vector cache at library scale: no-op ``tag``, ``retag --dry-run``, cache size, peak memory.

Run (about 10-15 minutes at 100,000 files on 2 cores, most of it building the library)::

    python3 bench/cache_scale.py --files 100000 --workdir /tmp/rtagx-cache-scale

Quick check::

    python3 bench/cache_scale.py --files 5000

What it builds, in ``--workdir`` (reused when it already holds a library of the same size unless
``--rebuild``):

* a model config + checkpoint of a tiny open_clip CLIP whose embedding is 512-dim, like ViT-B/16,
  so the cache holds vectors of exactly the ViT-B/16 size (1 KiB each as float16);
* ``--files`` tiny real JPEGs (unique image data each) in nested folders, 100 per leaf folder;
* the cache, filled through the ``rtagx.cache.store`` API exactly as ``rtagx tag`` fills it: one file row
  and fingerprint per file (size, mtime, ctime, inode, fingerprint from ``fingerprint_file``), one image
  vector per content under the model's identity key, and a text vector for every prompt of the
  1,000-tag ``imagenet`` vocabulary (7,077 prompts) keyed by the exact prompt text. Image vectors
  are synthetic: each the normalized sum of three random tags' vectors plus noise, so the default
  threshold chooses a few tags per image;
* then one real ``rtagx tag ROOT`` run, which scores every file and writes its keywords into the
  JPEG (XMP + IPTC) and records what it wrote. That run is setup and is not timed.

What it measures, each as a subprocess of the real CLI (``python -m rtagx``, so Python, click,
numpy and torch import time are included), peak RSS from ``os.wait4`` of that child:

1. ``rtagx tag ROOT``: every file unchanged, cached and already written: goal <= 10 s, <= 1.5 GB
   (counts checked from its summary line); then the same with ``--json``, which prints a line per
   file, for information;
2. ``rtagx retag ROOT --dry-run --json``: every cached vector re-scored against the 1,000-tag
   vocabulary with the settings ``tag`` remembered: goal <= 15 s, <= 1.5 GB (the summary must
   count every file: seen == tagged + untagged == N);
3. ``rtagx retag ROOT --dry-run --json --threshold 0.3``: as 2, but new settings, so every file
   whose tags change is planned (its metadata read) as a would-write;
4. cache size on disk (database + WAL) after those runs: goal <= 150 MB;
5. the content fingerprint's cost: ms per 12 MP camera JPEG from the page cache (MB/s), beside
   schema 3's sampled fingerprint, and per library file; it is paid only when a file is new or
   its identity (size, mtime, ctime, inode) changed, never on a no-op run or a retag.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GOAL_NOOP_S = 10.0
GOAL_RETAG_S = 15.0
GOAL_SIZE_MB = 150.0
GOAL_RSS_GB = 1.5
DIM = 512
PER_FOLDER = 100
TEXT_SUMMARY = re.compile(
    r"(?P<seen>\d+) files: embedded (?P<embedded>\d+), reused (?P<reused>\d+), "
    r"tagged (?P<tagged>\d+), (?:written|would write) (?P<written>\d+), "
    r"unchanged (?P<unchanged>\d+), skipped (?P<skipped>\d+)"
)

MODEL_CONFIG = {
    "embed_dim": DIM,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_model(directory: Path) -> tuple[Path, Path]:
    import open_clip
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "rtagx-bench-512.json"
    checkpoint = directory / "rtagx-bench-512.pt"
    if not (config.exists() and checkpoint.exists()):
        config.write_text(json.dumps(MODEL_CONFIG, indent=2))
        torch.manual_seed(0)
        model = open_clip.model.CLIP(**MODEL_CONFIG)
        torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint


def _tiny_jpeg(rng: np.random.Generator) -> bytes:
    """A 16x16 JPEG of random pixels: its image data (what the fingerprint hashes) is its own."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def file_path(root: Path, i: int) -> Path:
    return root / f"a{i // 10000:03d}" / f"b{(i // PER_FOLDER) % 100:02d}" / f"img{i:07d}.jpg"


def build_library(work: Path, n: int, seed: int = 0) -> dict:
    """Files, model and a filled cache; returns what the runs need."""
    from rtagx.cache.fingerprint import fingerprint_file
    from rtagx.cache.store import FileRow, open_store, pack_vector
    from rtagx.model.encoder import resolve_model
    from rtagx.tags import scoring
    from rtagx.tags import vocab as vocab_mod

    rng = np.random.default_rng(seed)
    config, checkpoint = build_model(work / "model")
    root = Path(os.path.abspath(work / "library"))
    cache = work / "cache.sqlite3"
    for p in (cache, Path(f"{cache}-wal"), Path(f"{cache}-shm"), Path(f"{cache}.lock")):
        p.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)

    _log(f"writing {n} tiny JPEGs under {root}")
    rows: list[FileRow] = []
    for i in range(n):
        path = file_path(root, i)
        if i % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_tiny_jpeg(rng))
        st = os.stat(path)
        rows.append(FileRow(path, st.st_size, st.st_mtime_ns, fingerprint_file(path), st.st_ctime_ns, st.st_ino))

    resolved = resolve_model(str(config), str(checkpoint), offline=True)
    vocabulary = vocab_mod.load_vocabulary("imagenet")
    prompts = vocabulary.all_prompts()
    _log(f"filling the cache: {n} image vectors ({DIM}-dim), {len(prompts)} prompt vectors")
    with open_store(cache) as store:
        mid = store.model_id(resolved.identity.key, resolved.identity.as_dict(), dim=DIM, logit_scale=100.0)
        # prompt vectors: a random direction per tag, each prompt near it
        text: dict[str, np.ndarray] = {}
        for tag in vocabulary.tags:
            centre = rng.normal(size=DIM)
            for p in vocabulary.prompts_for(tag):
                if p not in text:
                    v = centre + 0.5 * rng.normal(size=DIM)
                    text[p] = (v / np.linalg.norm(v)).astype(np.float32)
        store.put_text_vectors(mid, prompts, np.stack([text[p] for p in prompts]))
        stored = store.text_vectors(mid, prompts)  # float16-rounded, as rtagx will see them
        matrix = scoring.build_tag_matrix(vocabulary, stored)
        step = 5000
        for start in range(0, n, step):
            part = rows[start : start + step]
            ids = store.put_files(part)
            picks = rng.integers(0, len(vocabulary.tags), size=(len(part), 3))
            vecs = matrix[picks].sum(axis=1) + rng.normal(scale=1.0 / np.sqrt(DIM), size=(len(part), DIM)) * 1.5
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.put_vectors(mid, ids, vecs.astype(np.float32))
        assert len(pack_vector(vecs[0])) == DIM * 2
    return {"root": root, "cache": cache, "config": config, "checkpoint": checkpoint, "n": n}


def run_cli(args: list[str], env: dict[str, str], stdout_path: Path) -> tuple[float, float, int, dict | None]:
    """(wall seconds, peak RSS in MB, exit code, JSON summary) of one ``python -m rtagx`` child."""
    with open(stdout_path, "wb") as out, open(stdout_path.with_suffix(".err"), "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "rtagx", *args], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    summary = None
    with open(stdout_path, "rb") as f:
        try:
            f.seek(-4096, os.SEEK_END)
        except OSError:
            f.seek(0)
        for line in f.read().decode("utf-8", "replace").splitlines()[::-1]:
            if line.startswith('{"summary"') or '"summary": true' in line[:40]:
                summary = json.loads(line)
                break
            m = TEXT_SUMMARY.match(line)  # the plain-text summary: "N files: embedded E, reused R, ..."
            if m:
                summary = {k: int(v) for k, v in m.groupdict().items()}
                break
    return wall, usage.ru_maxrss / 1024.0, proc.returncode, summary


def fingerprint_cost(work: Path, root: Path, n: int) -> dict[str, float]:
    """What content fingerprints cost (best of 20), from the page cache (the disk read comes on top,
    and is paid by the decode of a new file anyway): MB/s on a camera-size JPEG (12 MP, ~4-6 MB),
    against the sampled fingerprint of schema 3 (the first and last 64 KiB), and per library file."""
    import hashlib

    from PIL import Image

    from rtagx.cache.fingerprint import fingerprint_file

    photo = work / "photo-12mp.jpg"
    if not photo.exists():
        rng = np.random.default_rng(1)
        base = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
        big = Image.fromarray(base).resize((4000, 3000), Image.Resampling.BICUBIC)
        noisy = np.asarray(big, dtype=np.int16) + rng.integers(-12, 13, size=(3000, 4000, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(photo, quality=92)
    size_mb = photo.stat().st_size / 1e6
    fingerprint_file(photo)  # warm the page cache

    def best_of(fn: object, reps: int = 20) -> float:
        """The fastest of ``reps`` calls: the figure least disturbed by other work on the machine."""
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(photo)  # type: ignore[operator]
            best = min(best, time.perf_counter() - t0)
        return best

    per_photo = best_of(fingerprint_file)

    def sampled(path: Path) -> str:  # schema 3's fingerprint, for comparison
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            h.update(f.read(65536))
            f.seek(max(0, size - 65536))
            h.update(f.read(65536))
        return h.hexdigest()

    per_sampled = best_of(sampled)
    files = [file_path(root, i) for i in range(0, n, max(1, n // 2000))]
    t0 = time.perf_counter()
    for path in files:
        fingerprint_file(path)
    per_file = (time.perf_counter() - t0) / len(files)
    return {
        "photo_mb": size_mb,
        "photo_ms": per_photo * 1000,
        "photo_mb_s": size_mb / per_photo,
        "sampled_ms": per_sampled * 1000,
        "library_file_ms": per_file * 1000,
    }


def cache_size(cache: Path) -> tuple[float, float, dict[str, float]]:
    """(database MB, WAL MB, MB per table) of the cache."""
    db = cache.stat().st_size / 1e6
    wal_path = Path(f"{cache}-wal")
    wal = wal_path.stat().st_size / 1e6 if wal_path.exists() else 0.0
    tables: dict[str, float] = {}
    try:
        conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"):
            tables[name] = size / 1e6
        conn.close()
    except sqlite3.Error:
        pass
    return db, wal, tables


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000, help="library size (default 100000)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rtagx-cache-scale"))
    ap.add_argument("--rebuild", action="store_true", help="build the library even if --workdir has one")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:
        built = build_library(work, args.files)
        (work / "build.json").write_text(
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in built.items()})
        )
        return 0
    marker = work / "built.json"
    env = {
        **os.environ,
        "RTAGX_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "RTAGX_NO_PROGRESS": "1",
        "XDG_CONFIG_HOME": str(work / "xdg-config"),
    }  # no user config file leaks in
    info = json.loads(marker.read_text()) if marker.exists() and not args.rebuild else None
    if info is None or info.get("n") != args.files:
        marker.unlink(missing_ok=True)
        t0 = time.perf_counter()
        # Build in a child process: this process stays small (no torch), so the peak RSS that
        # os.wait4 reports for each measured child is the child's own, not inherited across fork.
        subprocess.run(
            [sys.executable, __file__, "--files", str(args.files), "--workdir", str(work), "--build-only"], check=True
        )
        built = json.loads((work / "build.json").read_text())
        built = {k: Path(v) if k != "n" else v for k, v in built.items()}
        common = [
            "--model",
            str(built["config"]),
            "--pretrained",
            str(built["checkpoint"]),
            "--cache",
            str(built["cache"]),
        ]
        _log("first `rtagx tag` run: scores every file and writes its keywords (setup, not timed)")
        wall, rss, rc, summary = run_cli(
            ["tag", str(built["root"]), *common, "--yes", "--json"], env, work / "first-tag.jsonl"
        )
        if rc != 0 or not summary or summary["embedded"] != 0 or summary["written"] != args.files:
            _log(f"first run did not write every file: rc={rc} summary={summary}")
            return 1
        _log(f"first run: {wall:.1f} s, {rss:.0f} MB; setup {time.perf_counter() - t0:.0f} s in all")
        info = {k: str(v) if isinstance(v, Path) else v for k, v in built.items()}
        marker.write_text(json.dumps(info))
    n = info["n"]
    common = ["--cache", info["cache"]]
    model = ["--model", info["config"], "--pretrained", info["checkpoint"]]

    rows: list[tuple[str, str, str, bool]] = []
    problems: list[str] = []

    noop_timings = None
    for label, extra in (("", []), (" --json (a line per file)", ["--json"])):
        _log(f"timing the no-op `rtagx tag{label}`")
        wall, rss, rc, s = run_cli(
            ["tag", info["root"], *model, *common, "--yes", *extra],
            env,
            work / f"noop-tag{'-json' if extra else ''}.out",
        )
        if not (rc == 0 and s and s["seen"] == n and s["unchanged"] == n and s["embedded"] == 0 and s["written"] == 0):
            problems.append(f"no-op tag{label}: rc={rc} summary={s}")
        rows.append(
            (f"no-op tag{label}, {n} unchanged files", f"{wall:.2f} s", f"<= {GOAL_NOOP_S:g} s", wall <= GOAL_NOOP_S)
        )
        rows.append(("  peak RSS", f"{rss:.0f} MB", f"<= {GOAL_RSS_GB * 1000:g} MB", rss <= GOAL_RSS_GB * 1000))
        noop_timings = (s or {}).get("timings", noop_timings)

    _log("timing `rtagx retag --dry-run` (remembered settings)")
    wall, rss, rc, s = run_cli(["retag", info["root"], *common, "--dry-run", "--json"], env, work / "retag.jsonl")
    ok = rc == 0 and s and s["seen"] == n and s["reused"] == n and s["skipped"] == 0
    if not ok:
        problems.append(f"retag --dry-run: rtagx did not score every file: rc={rc} summary={s}")
    rows.append((f"retag --dry-run, {n} x 1000 tags", f"{wall:.2f} s", f"<= {GOAL_RETAG_S:g} s", wall <= GOAL_RETAG_S))
    rows.append(("  peak RSS", f"{rss:.0f} MB", f"<= {GOAL_RSS_GB * 1000:g} MB", rss <= GOAL_RSS_GB * 1000))
    retag_summary = s

    _log("timing `rtagx retag --dry-run --threshold 0.3` (new settings: changed files are planned)")
    wall, rss, rc, s = run_cli(
        ["retag", info["root"], *common, "--dry-run", "--json", "--threshold", "0.3"], env, work / "retag-new.jsonl"
    )
    ok = rc == 0 and s and s["seen"] == n and s["reused"] == n and s["skipped"] == 0
    if not ok:
        problems.append(f"retag --dry-run --threshold 0.3: rc={rc} summary={s}")
    rows.append(
        (
            f"retag --dry-run --threshold 0.3 ({(s or {}).get('written', '?')} would-write)",
            f"{wall:.2f} s",
            f"<= {GOAL_RETAG_S:g} s",
            wall <= GOAL_RETAG_S,
        )
    )
    rows.append(("  peak RSS", f"{rss:.0f} MB", f"<= {GOAL_RSS_GB * 1000:g} MB", rss <= GOAL_RSS_GB * 1000))
    retag_new_summary = s

    _log("timing content fingerprints")
    fp = fingerprint_cost(work, Path(info["root"]), n)

    db, wal, tables = cache_size(Path(info["cache"]))
    scaled = (db + wal) * 100_000 / n
    rows.append(
        (
            f"cache size, {n} files x {DIM}-dim vectors (db + WAL)",
            f"{db + wal:.1f} MB",
            f"<= {GOAL_SIZE_MB * n / 100_000:g} MB",
            scaled <= GOAL_SIZE_MB,
        )
    )
    vec = tables.get("vectors", 0.0) + tables.get("sqlite_autoindex_vectors_1", 0.0)
    rows.append(
        (
            "  of which image vectors (table + key index)",
            f"{vec:.1f} MB",
            f"<= {GOAL_SIZE_MB * n / 100_000:g} MB",
            vec * 100_000 / n <= GOAL_SIZE_MB,
        )
    )

    width = max(len(r[0]) for r in rows) + 2
    load = os.getloadavg()
    print(
        f"rtagx cache at scale: {n} files, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'measure':<{width}}{'figure':>12}  {'goal':<12}result")
    for name, figure, goal, passed in rows:
        print(f"{name:<{width}}{figure:>12}  {goal:<12}{'ok' if passed else 'MISSED'}")
    print("cache tables (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in tables.items() if v >= 0.05))
    print(f"no-op tag timings: {noop_timings}")
    print(
        f"fingerprint (image data, SHA-256, page cache): {fp['photo_ms']:.1f} ms per {fp['photo_mb']:.1f} MB "
        f"12 MP JPEG ({fp['photo_mb_s']:.0f} MB/s; schema 3's sampled one: {fp['sampled_ms']:.2f} ms), "
        f"{fp['library_file_ms']:.3f} ms per library file; 100,000 such photos: "
        f"{fp['photo_ms'] * 100:.0f} s, paid only for new or touched files (no-op and retag read no file)"
    )
    if retag_summary:
        print(
            f"retag --dry-run summary: seen {retag_summary['seen']}, reused {retag_summary['reused']}, "
            f"tagged {retag_summary['tagged']}, unchanged {retag_summary['unchanged']}, "
            f"would-write {retag_summary['written']}; timings {retag_summary['timings']}"
        )
    if retag_new_summary:
        print(
            f"retag --threshold 0.3 summary: tagged {retag_new_summary['tagged']}, unchanged "
            f"{retag_new_summary['unchanged']}, would-write {retag_new_summary['written']}; "
            f"timings {retag_new_summary['timings']}"
        )
    for p in problems:
        print(f"PROBLEM: {p}")
    _log(f"{work} is left in place for reruns (delete it when done)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
