"""`rtagx watch`: latency from a photo landing to its keywords written, and the idle cost of a watcher.

    python bench/watch_latency.py --model tiny --count 200            # latency, tests' tiny CLIP
    python bench/watch_latency.py --model vit-b-16 --count 30         # ViT-B-16 (random weights)
    python bench/watch_latency.py --idle-files 100000 --count 0       # idle CPU over a large tree

Latency: a real ``python -m rtagx watch --json`` process watches an empty folder. Distinct camera-like
500x375 JPEGs land one by one, ``--interval`` seconds apart; each is written under a hidden name and
renamed into place (it *lands* when the rename is done, complete). A reader thread stamps every JSON
line as it arrives; a file's latency is the stamp of its ``written`` line minus its landing time. It
includes ``--settle`` (the wait that proves a file complete) by design.

Idle: a tree of ``--idle-files`` hard links to one JPEG (``--per-folder`` per folder: no disk space, the
watcher cannot tell), whose content the cache already knows; the watcher catches up (``--write none``:
hard links stay links), then its CPU time (utime + stime from /proc) is read over ``--idle-seconds``
with nothing happening, with native events and with ``--poll``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from throughput import make_images, make_model  # noqa: E402


class WatchProcess:
    """``python -m rtagx watch ... --json``; every stdout line stamped with time.monotonic() on arrival."""

    def __init__(self, folder: Path, model: tuple[str, str], cache: Path, vocab: Path, *extra: str) -> None:
        args = [sys.executable, "-m", "rtagx", "watch", str(folder), "--model", model[0], "--pretrained", model[1]]
        args += ["--cache", str(cache), "--tags", str(vocab), "--threshold", "-1", "--top-k", "3", "--json", "--yes"]
        args += extra
        env = {**os.environ, "PYTHONPATH": str(REPO), "RTAGX_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.lines: list[tuple[float, dict]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp = time.monotonic()
            if line.startswith("{"):
                self.lines.append((stamp, json.loads(line)))

    def wait_for(self, what: str, condition, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"watcher exited ({self.proc.returncode}) waiting for {what}: {''.join(self.stderr)}")
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def rounds(self, kind: str | None = None) -> list[dict]:
        return [o for _, o in self.lines if "round" in o and (kind is None or o["kind"] == kind)]

    def cpu_seconds(self) -> float:
        """utime + stime of the watcher process (all its threads), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=600)

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed wait: never leave a watcher behind
            self.proc.kill()
            self.proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latency(args: argparse.Namespace, work: Path, model: tuple[str, str], vocab: Path) -> None:
    sources = make_images(work / f"src-{args.count}", args.count, (500, 375))
    folder = work / "landing"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    cache = work / f"cache-latency-{args.model}.sqlite3"
    cache.unlink(missing_ok=True)
    with WatchProcess(folder, model, cache, vocab, "--settle", str(args.settle)) as w:
        w.wait_for("the catch-up round", lambda: w.rounds("catch-up"))
        landed: dict[str, float] = {}
        for i, src in enumerate(sources):
            part, final = folder / f".{src.name}.part", folder / src.name
            shutil.copyfile(src, part)
            os.rename(part, final)
            landed[str(final)] = time.monotonic()
            if i + 1 < len(sources):
                time.sleep(args.interval)
        written: dict[str, float] = {}

        def all_written() -> bool:
            for stamp, o in w.lines:
                if o.get("action") == "written":
                    written.setdefault(o["path"], stamp)
            return len(written) >= len(landed)

        w.wait_for("every file written", all_written)
        w.wait_for("the last round's line", lambda: sum(r["files"] for r in w.rounds("new")) >= len(landed))
        rounds = w.rounds("new")
        rc = w.stop()
    waits = [written[p] - t for p, t in landed.items()]
    print(
        f"latency {args.model}: {len(waits)} files landing every {args.interval:g} s, settle {args.settle:g} s: "
        f"median {statistics.median(waits):.2f} s, p95 {percentile(waits, 0.95):.2f} s, max {max(waits):.2f} s; "
        f"{len(rounds)} rounds (mean {statistics.mean(r['files'] for r in rounds):.1f} files, "
        f"{statistics.mean(r['seconds'] for r in rounds):.2f} s); exit {rc}"
    )


def make_tree(root: Path, files: int, per_folder: int, photo: Path) -> None:
    """``files`` hard links to copies of ``photo`` in folders of ``per_folder``; kept between runs."""
    marker = root / f".complete-{files}-{per_folder}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    sources = root.parent / f"{root.name}-sources"  # ext4 allows 65,000 links to one inode: a copy per 50,000
    sources.mkdir(exist_ok=True)
    for i in range(files):
        folder = root / f"d{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        source = sources / f"{i // 50_000}.jpg"
        if i % 50_000 == 0:
            source.unlink(missing_ok=True)
            shutil.copyfile(photo, source)
        os.link(source, folder / f"img{i:06d}.jpg")
    marker.touch()


def idle(args: argparse.Namespace, work: Path, model: tuple[str, str], vocab: Path) -> None:
    photo = make_images(work / "src-1", 1, (500, 375))[0]
    tree = work / "tree"
    t = time.perf_counter()
    make_tree(tree, args.idle_files, args.per_folder, photo)
    folders = -(-args.idle_files // args.per_folder)
    print(f"tree: {args.idle_files} files in {folders} folders ({time.perf_counter() - t:.0f} s to make)")
    cache = work / f"cache-idle-{args.model}.sqlite3"
    seed = work / "seed"
    seed.mkdir(exist_ok=True)
    shutil.copyfile(photo, seed / "seed.jpg")
    seed_args = ["tag", str(seed), "--model", model[0], "--pretrained", model[1], "--cache", str(cache)]
    subprocess.run(
        [sys.executable, "-m", "rtagx", *seed_args, "--tags", str(vocab), "--write", "none", "-q", "--yes"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    for label, extra in (("native events", []), (f"--poll {args.poll:g}", ["--poll", str(args.poll)])):
        with WatchProcess(tree, model, cache, vocab, "--write", "none", *extra) as w:
            t = time.monotonic()
            w.wait_for("the catch-up round", lambda w=w: w.rounds("catch-up"))
            catch_up = time.monotonic() - t
            time.sleep(2)  # let the catch-up's last writes settle
            cpu0, t0 = w.cpu_seconds(), time.monotonic()
            time.sleep(args.idle_seconds)
            cpu1, t1 = w.cpu_seconds(), time.monotonic()
            rss = w.rss_mb()
            rc = w.stop()
        print(
            f"idle, {label}: {args.idle_files} files: catch-up {catch_up:.0f} s; then {cpu1 - cpu0:.2f} CPU s over "
            f"{t1 - t0:.0f} s = {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of one core; RSS {rss:.0f} MB; exit {rc}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "vit-b-16"], default="tiny")
    ap.add_argument("--count", type=int, default=200, help="photos landing for the latency figure (0: skip)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between landings (default 0.25)")
    ap.add_argument("--settle", type=float, default=2.0, help="the watcher's --settle (default 2, its default)")
    ap.add_argument("--idle-files", type=int, default=0, help="files in the idle tree (0: skip the idle figure)")
    ap.add_argument("--per-folder", type=int, default=100)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--poll", type=float, default=30.0, help="--poll interval for the polling idle figure")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-watch")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(args.model, work)
    vocab = work / "tags.txt"
    vocab.write_text("dog\ncat\nmountain\nbeach\ncar\nfood\nperson\nbuilding\ntree\nsky\n")
    if args.count:
        latency(args, work, model, vocab)
    if args.idle_files:
        idle(args, work, model, vocab)


if __name__ == "__main__":
    main()
