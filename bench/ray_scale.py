"""Ray engine scaling: the local engine against ``--engine ray`` on 1 and 2 worker nodes of a local
Ray cluster, and the driver's own ceiling.

    python bench/ray_scale.py --images 32                   # smoke run, tests' tiny CLIP
    python bench/ray_scale.py --model vit-b-16 --images 96 --driver-images 2000

* local: ``run_tag`` with the local engine on a fresh copy, cold cache;
* ray, N worker nodes: a ``ray.cluster_utils.Cluster`` on this machine (head with no CPUs, so all
  work goes to the N worker nodes of 2 logical CPUs each), ``--engine ray`` with its defaults;
  every simulated node shares this machine's cores, so this measures the engine's overhead, not
  scaling: on real nodes each brings its own cores or GPU;
* driver ceiling: the driver's path alone (BatchWriter: store_batch, score, write keywords into
  each JPEG) fed random unit vectors as fast as it takes them, i.e. vectors arriving instantly.
  Reported for ``--write embed`` (keywords into each file) and ``--write none`` (store + score).

Rates: "whole run" is images over the ``run_tag`` call (with the cluster attach, the model probe
and actor start for Ray); "embed stage" is images over the embed stage (its start to the last file
written); "first vector" is how long the embed stage waits for its first vector (for Ray: the
attach and the model probe, then actor start and the first batch). Numbers are noisy on a shared
machine: read ``uptime`` beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("RTAGX_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # Ray's workers

import numpy as np  # noqa: E402

MB = 1 << 20


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def timed_run(files: list[Path], workdir: Path, label: str, model: tuple[str, str], **extra) -> dict:
    """run_tag on a fresh copy with a cold cache: whole-run and embed-stage rates."""
    from throughput import cold_settings, copy_folder

    from rtagx.run.events import RunEvents
    from rtagx.run.tag import run_tag

    folder = copy_folder(files, workdir / f"run-{label}")
    settings = cold_settings(workdir, label, model[0], model[1], extra)
    marks: dict[str, float] = {}

    def on_stage(name: str, total: int) -> None:
        marks.setdefault(f"stage-{name}", time.perf_counter())

    def on_file(outcome) -> None:
        marks["last-file"] = time.perf_counter()
        if outcome.embedded:
            marks.setdefault("first-embedded", marks["last-file"])

    t0 = time.perf_counter()
    summary = run_tag([folder], settings, events=RunEvents(on_file=on_file, on_stage=on_stage))
    wall = time.perf_counter() - t0
    embed_wall = marks.get("last-file", t0) - marks.get("stage-embed", t0)
    first = marks.get("first-embedded", t0)
    return {
        "embedded": summary.embedded,
        "written": summary.written,
        "skipped": summary.skipped,
        "wall": wall,
        "rate": summary.embedded / wall if wall else 0.0,
        "embed_rate": summary.embedded / embed_wall if embed_wall > 0 else 0.0,
        "ray_start": summary.timings.get("ray-start", 0.0),
        "first_vector": first - marks.get("stage-embed", t0),
    }


def ray_run(files: list[Path], workdir: Path, nodes: int, model: tuple[str, str]) -> dict:
    """The Ray engine on a fresh local cluster of ``nodes`` worker nodes (2 logical CPUs each)."""
    import ray
    from ray.cluster_utils import Cluster

    t = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 200 * MB},
    )
    for _ in range(nodes):
        cluster.add_node(num_cpus=2, object_store_memory=200 * MB)
    cluster.wait_for_nodes()
    started = time.perf_counter() - t
    try:
        out = timed_run(files, workdir, f"ray{nodes}", model, engine="ray", ray_address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    out["cluster_start"] = started
    return out


def driver_ceiling(count: int, workdir: Path, model: tuple[str, str], write: str) -> dict:
    """The driver's store + score + write path fed random unit vectors instantly: the local
    engine's ``embed`` is swapped for a feeder that hands BatchWriter batches of 128 vectors."""
    from throughput import BENCH_TAGS, _noise_jpegs

    import rtagx.run.tag as tag_mod
    from rtagx.run.events import RunEvents
    from rtagx.run.local import BatchWriter
    from rtagx.run.stages import ensure_fingerprints
    from rtagx.settings import load_settings

    source = _noise_jpegs(workdir / f"driver-src-{count}", count)
    folder = workdir / f"driver-{write}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder)
    cache = workdir / f"cache-driver-{write}.sqlite3"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    tags = workdir / "bench-tags.txt"
    tags.write_text(BENCH_TAGS)
    rng = np.random.default_rng(0)
    window: dict[str, float] = {}

    def instant(tagger, encoder, works, settings, summary, events, dry_run) -> None:
        ensure_fingerprints(works)
        dim = tagger.vector_dim()
        window["start"] = time.perf_counter()
        writer = BatchWriter(tagger, summary, events)
        for start in range(0, len(works), 128):
            part = works[start : start + 128]
            v = rng.standard_normal((len(part), dim)).astype(np.float32)
            writer.put(("batch", part, v / np.linalg.norm(v, axis=1, keepdims=True)))
        writer.close()
        window["end"] = time.perf_counter()

    options = {"cache": str(cache), "model": model[0], "pretrained": model[1], "write": write}
    options |= {"threshold": -1.0, "top_k": 5, "tags": str(tags), "offline": True}
    real = tag_mod.embed
    tag_mod.embed = instant
    try:
        summary = tag_mod.run_tag([folder], load_settings(options, environ={}), events=RunEvents())
    finally:
        tag_mod.embed = real
    seconds = window["end"] - window["start"]
    return {
        "files": summary.embedded,
        "written": summary.written,
        "seconds": seconds,
        "rate": summary.embedded / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    from throughput import make_images, make_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "vit-b-16"], default="tiny")
    ap.add_argument("--images", type=int, default=64, help="500x375 JPEGs per engine run")
    ap.add_argument("--driver-images", type=int, default=1000, help="files for the driver ceiling")
    ap.add_argument("--nodes", default="1,2", help="worker node counts to run the Ray engine on")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.gettempdir()) / "rtagx-bench-ray"
    workdir.mkdir(parents=True, exist_ok=True)
    model = make_model(args.model, workdir)
    files = make_images(workdir / "images-small", args.images, (500, 375))
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; model {args.model}")
    rows = []
    local = timed_run(files, workdir, "local", model)
    rows.append(("local engine", local))
    for n in [int(x) for x in args.nodes.split(",") if x.strip()]:
        rows.append((f"ray, {n} worker node{'s' if n > 1 else ''}", ray_run(files, workdir, n, model)))
    print(f"\n{args.images} images, 500x375 JPEG, cold cache, keywords written into each file")
    print(
        "| engine | whole run img/s | embed stage img/s | vs local (embed stage) | first vector after s (attach + probe) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, r in rows:
        assert r["embedded"] == args.images and r["written"] == args.images, (label, r)
        ratio = r["embed_rate"] / local["embed_rate"] if local["embed_rate"] else 0.0
        start = f" ({r['ray_start']:.1f})" if r["ray_start"] else ""
        print(f"| {label} | {r['rate']:.2f} | {r['embed_rate']:.2f} | {ratio:.2f}x | {r['first_vector']:.1f}{start} |")
    print(f"\ndriver ceiling: {args.driver_images} 160x120 JPEGs, random vectors arriving instantly")
    print("| driver path | files/s |")
    print("| --- | --- |")
    for write, label in (("embed", "store + score + write keywords into each JPEG"), ("none", "store + score")):
        d = driver_ceiling(args.driver_images, workdir, model, write)
        assert d["files"] == args.driver_images, d
        print(f"| {label} | {d['rate']:.0f} |")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
