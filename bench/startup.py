"""Startup cost: from typing the command to the first image encoded, for ``tag`` and ``retag``.

    python bench/startup.py                  # ViT-B-16 (random weights, as a user's checkpoint file)
    python bench/startup.py --model tiny

Each command runs in a fresh ``python -m rtagx`` process with ``--json --batch-size 1``, so the first
file line is printed as soon as the first image is encoded (and written). Reported per case: time to
that first line, total wall time, peak RSS, and the run's own timings (load-model, text prompts).

* ``tag``, cold: new cache, so the prompt vectors are encoded too (32-tag vocabulary);
* ``tag``, prompts cached: a second folder with the same cache (what a user sees on later runs);
* ``retag --tags coco``: new prompts, so a model is needed, yet only the text tower may be built.
  The process records every open_clip model and vision tower it builds; the row says what was built.
* ``import``: ``import rtagx.cli.commands, rtagx.run.tag`` plus torch and open_clip, the floor of any command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

# Runs the CLI in this process, after hooking open_clip so that we learn which towers get built.
HOOK = r"""
import resource, sys, time, json
import open_clip, open_clip.model as om, open_clip.factory as of
built = []
def wrap(mod, name, label):
    orig = getattr(mod, name)
    def hooked(*a, **k):
        built.append(label)
        return orig(*a, **k)
    setattr(mod, name, hooked)
wrap(om, "_build_vision_tower", "vision tower")
wrap(om, "_build_text_tower", "text tower")
wrap(open_clip, "create_model", "full model")
wrap(of, "create_model", "full model")
from rtagx.cli.commands import main
sys.argv = ["rtagx", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps({"built": sorted(set(built)), "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
      file=sys.stderr)
"""


def run(args: list[str], env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOK, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    first = None
    summary: dict = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and '"path"' in line:
            first = time.perf_counter() - t0
        if '"summary"' in line:
            summary = json.loads(line)
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait()
    wall = time.perf_counter() - t0
    info = {}
    for line in reversed(err.splitlines()):
        if line.startswith("{"):
            info = json.loads(line)
            break
    if proc.returncode not in (0, 3):
        print(err[-2000:], file=sys.stderr)
    return {"first": first, "wall": wall, "summary": summary, "rc": proc.returncode, **info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["vit-b-16", "tiny"], default="vit-b-16")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rtagx-bench-throughput")
    args = ap.parse_args(argv)
    from throughput import BENCH_TAGS, copy_folder, make_images, make_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_name, pretrained = make_model(args.model, args.workdir)
    img = make_images(args.workdir / "small", 2, (500, 375))
    tags = args.workdir / "bench-tags.txt"
    tags.write_text(BENCH_TAGS)
    work = args.workdir / "startup"
    shutil.rmtree(work, ignore_errors=True)
    a = copy_folder(img[:1], work / "a")
    b = copy_folder(img[1:2], work / "b")
    cache = work / "cache.sqlite3"
    env = {
        **os.environ,
        "RTAGX_CONFIG": os.devnull,
        "RTAGX_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    common = [
        "--model",
        model_name,
        "--pretrained",
        pretrained,
        "--cache",
        str(cache),
        "--json",
        "--yes",
        "--batch-size",
        "1",
        "--write",
        "embed",
        "--threshold",
        "-1",
        "--top-k",
        "3",
        "--tags",
        str(tags),
    ]
    print(f"model {args.model} ({model_name}); load {os.getloadavg()}")

    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import rtagx.cli.commands, rtagx.run.tag, torch, open_clip"], env=env, check=True
    )
    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import rtagx.cli"], env=env, check=True)
    cli_import = time.perf_counter() - t0

    rows = [
        ("tag, cold cache (prompts encoded)", run(["tag", str(a), *common], env)),
        ("tag, prompts cached", run(["tag", str(b), *common], env)),
        (
            "retag --tags coco (new prompts)",
            run(
                [
                    "retag",
                    str(a),
                    "--cache",
                    str(cache),
                    "--json",
                    "--yes",
                    "--tags",
                    "coco",
                    "--threshold",
                    "-1",
                    "--top-k",
                    "3",
                ],
                env,
            ),
        ),
    ]
    header = f"{'command':36} {'first image':>11} {'wall':>7} {'load-model':>10} {'text':>7} {'peak RSS':>9}  built"
    print("\n" + header + "\n" + "-" * (len(header) + 20))
    for name, r in rows:
        t = r["summary"].get("timings", {})
        first = f"{r['first']:.2f} s" if r["first"] is not None else "-"
        print(
            f"{name:36} {first:>11} {r['wall']:6.2f}s {t.get('load-model', 0):9.2f}s {t.get('text', 0):6.2f}s "
            f"{r.get('maxrss_mb', 0):7.0f}MB  {', '.join(r.get('built', [])) or 'nothing'} (exit {r['rc']})"
        )
    print(f"{'python -c import rtagx.cli':36} {'':>11} {cli_import:6.2f}s")
    print(f"{'python -c import rtagx + torch + open_clip':36} {'':>11} {imports:6.2f}s")
    print(f"\nload average after the run: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
