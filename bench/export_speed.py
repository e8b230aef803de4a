"""``rtagx export`` speed and memory on a synthetic cache of ViT-B/16-size vectors.

Run::

    python3 bench/export_speed.py --sizes 20000 100000 --workdir /tmp/rtagx-export-bench

What it builds in ``--workdir`` (reused when present): per size N, a cache filled through the Store
API as ``rtagx tag`` fills it: N files (1,000 per folder; they need not exist, since export reads
the cache only), one content and one random 512-dim float16 unit vector each, under a synthetic
model identity, one root remembering the default vocabulary (ImageNet's 1,000 classes) and the
default scoring options, and a random vector for every prompt of that vocabulary (so each file's
tags are scored as ``retag --dry-run`` scores them, with no model loaded).

What it measures: each export as a child process of the real CLI (``python -m rtagx export``:
interpreter start, imports, scoring every file against 1,000 tags, writing the shards), in both
formats, with wall time, CPU time (user + system) and peak RSS from GNU time. Rows per second are
rows over wall time. Memory should not grow with N (one block of 8,192 rows at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DIM = 512
PER_FOLDER = 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build_cache(workdir: Path, n: int) -> tuple[Path, Path]:
    """(cache, photo root) of ``n`` synthetic files with vectors, scored by a remembered root."""
    from rtagx.cache.store import open_store
    from rtagx.run.common import load_vocabulary_for
    from rtagx.run.tagger import root_settings
    from rtagx.settings import load_settings

    cache = workdir / f"cache-{n}.sqlite3"
    photos = workdir / f"photos-{n}"
    if cache.exists():
        return cache, photos
    log(f"building a cache of {n} vectors")
    rng = np.random.default_rng(n)
    tmp = cache.with_suffix(".building")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    settings = load_settings({}, environ={})
    key = f"synthetic:vit-b-16-size|{DIM}"
    with open_store(tmp) as store:
        model_id = store.model_id(key, {"name": "synthetic-512", "kind": "clip"}, dim=DIM)
        prompts = load_vocabulary_for(settings).all_prompts()
        store.put_text_vectors(model_id, prompts, unit_rows(rng, len(prompts)))
        step = 20_000
        for start in range(0, n, step):
            rows = [
                (
                    photos / f"{k // PER_FOLDER:04d}" / f"IMG_{k:07d}.jpg",
                    1000 + k,
                    1_700_000_000_000_000_000,
                    f"synthetic-{k}",
                )
                for k in range(start, min(n, start + step))
            ]
            ids = store.put_files(rows)
            store.put_vectors(model_id, ids, unit_rows(rng, len(rows)))
            log(f"  {start + len(rows)} / {n}")
        store.put_root(photos, root_settings(settings, key))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    tmp.rename(cache)
    return cache, photos


def run_export(cache: Path, to: Path, fmt: str) -> dict:
    """Wall seconds, CPU seconds, peak RSS and the --json summary of one export child."""
    shutil.rmtree(to, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RTAGX_NO_PROGRESS": "1"}
    args = ["export", "--cache", str(cache), "--to", str(to), "--format", fmt, "--json"]
    with tempfile.NamedTemporaryFile("r") as usage:
        command = ["/usr/bin/time", "-o", usage.name, "-f", "%M %U %S", sys.executable, "-m", "rtagx", *args]
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        peak_kb, user, system = usage.read().split()[-3:]
    if proc.returncode != 0:
        raise SystemExit(f"rtagx {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(float(user) + float(system), 2),
        "peak_rss_mb": round(int(peak_kb) / 1e3),
        "rows": summary["rows"],
        "rows_per_s_wall": round(summary["rows"] / wall),
        "export_s": summary["seconds"],
        "rows_per_s_export": summary["rows_per_second"],
        "mb_written": round(summary["bytes"] / 1e6, 1),
        "tags_from": summary["tags_from"],
    }


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rtagx-export-bench"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    log(f"CPU: {cpu_name()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    results = []
    for n in args.sizes:
        cache, _ = build_cache(args.workdir, n)
        for fmt in ("npy", "parquet"):
            for _ in range(args.repeat):
                row = {"vectors": n, "format": fmt, **run_export(cache, args.workdir / f"out-{n}-{fmt}", fmt)}
                row["load_average"] = round(os.getloadavg()[0], 1)
                log(json.dumps(row))
                results.append(row)
    print(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
