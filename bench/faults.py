"""Fault injection with figures: does rtagx ever damage a library? (issue 9)

    python3 bench/faults.py                            # 200 random kills, everything else once
    python3 bench/faults.py --kills 50 --midwrite 10 --fuzz 100
    python3 bench/faults.py --only kill,disk --kills 20

Runs the scenarios of tests/faults/ (same code: tests/faults/faultlib.py) with a configurable N, on a
tiny CLIP with fixed random weights (no download), real camera samples plus Pillow-made JPEG, PNG,
TIFF and WebP files, the real ``python -m rtagx`` in subprocesses and exiftool to read keywords back,
then prints one table:

    fault kind | faults injected | files checked | files damaged (must be 0) | leftovers | notes

* kill -9, random: SIGKILL after a seeded random delay spread over a whole run (measured first),
  rerun with the other vocabulary each time; after every kill: pixels, keyword sets (old or new,
  never a mix), leftover files, cache integrity_check. Then two complete runs (the second must do
  nothing). "files damaged" counts pixel/byte changes and mixed or duplicated keyword sets.
* kill -9, mid-write: the same, but the kill lands right after the k-th file is reported.
* kill -9, temp file open: SIGSTOP the moment a ``.rtagx-tmp`` file exists, SIGKILL, rerun.
* disk full: RLIMIT_FSIZE (EFBIG) on photo writes, and on the cache (mid-run and at start).
* concurrency: 2 and 4 processes on overlapping folders with one cache; 2 with a cache each.
* hostile inputs: truncated JPEGs, random bytes, a 30000x30000 PNG bomb, empty files.
* keyword fuzz: seeded random Unicode keyword lists written with write_keywords, read with exiftool.

"leftovers" counts files that are neither photos nor the sidecars rtagx is meant to write, still
there after the last complete run. Needs exiftool; uses the camera samples in tests/data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "faults"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faultlib as F

SCENARIOS = ("kill", "midwrite", "tmpkill", "disk", "concurrency", "hostile", "fuzz")


def _kill_row(kind: str, stats: dict) -> tuple:
    damaged = len(stats["damaged"]) + len(stats["bad_keywords"]) + len(stats["bad_cache"])
    phases = ", ".join(f"{k} {v}" for k, v in sorted(stats["phases"].items()))
    finals = [s for s in stats["final_summaries"] if s]
    second = finals[1::2]
    notes = (
        f"phases: {phases}; killed {stats['kills']}, finished first {stats['finished_before_kill']}; "
        f"cache {'ok' if set(stats['final_cache']) == {'ok'} and not stats['bad_cache'] else 'BAD'}; "
        f"2nd full run embeds {sum(s['embedded'] for s in second)}, writes {sum(s['written'] for s in second)}; "
        f"temp files seen after kills: {stats['leftovers_seen']}"
    )
    if stats["final_mismatch"]:
        notes += f"; FINAL MISMATCH {len(stats['final_mismatch'])}"
    return (
        kind,
        stats["kills"],
        stats["checks"] * stats["files"] // max(1, len(finals) // 2) if finals else 0,
        damaged,
        len(stats["leftovers_after_final"]) + len(stats["cache_leftovers"]),
        notes,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200, help="random-moment SIGKILLs (default 200)")
    ap.add_argument("--midwrite", type=int, default=20, help="SIGKILLs right after the k-th file is reported")
    ap.add_argument("--lanes", type=int, default=2, help="independent libraries killed in parallel")
    ap.add_argument("--fuzz", type=int, default=200, help="random keyword lists written and read back")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every kill")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if shutil.which("exiftool") is None:
        print("exiftool is needed", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="rtagx-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    log = print if args.verbose else (lambda *_: None)
    model = F.tiny_model(work / "model")
    rows: list[tuple] = []
    details: list[str] = []
    started = time.perf_counter()

    def timed(name: str):
        print(f"[{time.perf_counter() - started:7.1f}s] {name} ...", file=sys.stderr, flush=True)

    try:
        if "kill" in only and args.kills:
            timed(f"kill -9 x {args.kills}")
            s = F.kill_lanes(work / "kill", model, args.kills, lanes=args.lanes, seed=args.seed, log=log)
            rows.append(_kill_row("kill -9, random moment", s))
            details += s["damaged"] + s["bad_keywords"] + s["bad_cache"] + s["final_mismatch"]
        if "midwrite" in only and args.midwrite:
            timed(f"kill -9 mid-write x {args.midwrite}")
            s = F.kill_lanes(
                work / "midwrite", model, args.midwrite, lanes=args.lanes, seed=args.seed + 7, mode="midwrite", log=log
            )
            rows.append(_kill_row("kill -9, mid-write", s))
            details += s["damaged"] + s["bad_keywords"] + s["bad_cache"] + s["final_mismatch"]
        if "tmpkill" in only:
            timed("kill -9 while a temp file exists")
            t = F.targeted_tmp_kill(work / "tmpkill", model)
            rows.append(
                (
                    "kill -9, temp file open",
                    t["caught"],
                    30 if t["caught"] else 0,
                    len(t["damaged"]),
                    len(t["left_after_rerun"]),
                    f"caught in try {t['tries']}; left after kill {len(t['left_after_kill'])}, after the next "
                    f"complete run {len(t['left_after_rerun'])} (rtagx never removes its temp files); "
                    f"cache {t['cache']}",
                )
            )
            details += t["damaged"] + [f"left behind: {p}" for p in t["left_after_rerun"]]
        if "disk" in only:
            timed("disk full: photos")
            d = F.disk_full_photos(work / "disk-photos", model)
            r = d["run"]
            rows.append(
                (
                    "disk full (photo writes, EFBIG)",
                    d["faults"],
                    d["files"],
                    len(d["damaged"]),
                    len(d["leftovers"]),
                    f"exit {r.rc}; skip reasons {r.summary['skip_reasons'] if r.summary else None}; "
                    f"{len(d['problems'])} problems",
                )
            )
            details += d["damaged"] + d["problems"]
            timed("disk full: cache")
            c = F.disk_full_cache(work / "disk-cache", model)
            mid, start = c["mid"], c["start"]
            rows.append(
                (
                    "disk full (cache, mid-run + at start)",
                    2,
                    c["files"],
                    len(c["damaged"]),
                    len(c["leftovers"]) + len(c["cache_leftovers"]),
                    f"mid-run exit {mid.rc} ({'one line' if F.one_line_error(mid.stderr) else 'NOT one line'}), "
                    f"at start exit {start.rc} ({'one line' if F.one_line_error(start.stderr) else 'NOT one line'}); "
                    f"cache {c['cache_mid']}/{c['cache_final']}; recovery exit {c['recover'].rc}, "
                    f"then embeds {c['again'].summary and c['again'].summary['embedded']}",
                )
            )
            details += c["damaged"]
        if "concurrency" in only:
            ref = F.concurrency_reference(work / "conc-ref", model)
            for procs, shared, pre in ((2, True, False), (4, True, True), (2, False, False)):
                label = "a cache each" if not shared else "one existing cache" if pre else "one new cache"
                timed(f"concurrency: {procs} processes, {label}")
                o = F.concurrency_scenario(
                    work / f"conc-{procs}-{shared}-{pre}",
                    model,
                    procs,
                    shared_cache=shared,
                    reference=ref,
                    precreate=pre,
                )
                rows.append(
                    (
                        f"{procs} processes at once, {label}",
                        procs,
                        o["files"],
                        len(o["damaged"]) + len(o["mismatch"]),
                        len(o["leftovers"]),
                        f"exit codes {o['rcs']}; cache {','.join(sorted(set(o['cache'])))}; "
                        f"{len(o['problems'])} problems (locked/traceback/bad skips)",
                    )
                )
                details += o["damaged"] + o["mismatch"] + o["problems"]
            timed("concurrency: first open of a new cache")
            race = F.first_open_race(work / "race", procs=6, reps=3)
            rows.append(
                (
                    "6 processes open a new cache at once",
                    18,
                    0,
                    0,
                    0,
                    f"{len(race)} of 18 opens failed" + (f", e.g. {race[0].split(': ', 2)[-1][:90]}" if race else ""),
                )
            )
            details += race[:5]
        if "hostile" in only:
            timed("hostile inputs")
            lib = work / "hostile" / "lib"
            expect = F.make_hostile(lib)
            raw = {p: p.read_bytes() for p in expect}
            vocab = work / "hostile" / "vocab.txt"
            vocab.write_text(F.VOCAB_A)
            r = F.run_rtagx(F.tag_args([lib], model, work / "hostile" / "c.sqlite3", vocab), work / "hostile")
            changed = [str(p) for p, b in raw.items() if p.read_bytes() != b and expect[p] != "written-or-skip"]
            problems = F.skip_problems(r, expect)
            rows.append(
                (
                    "hostile inputs (truncated, random, bomb, empty)",
                    len(expect),
                    len(expect),
                    len(changed),
                    len(F.leftovers(lib, set(expect))),
                    f"exit {r.rc}; reasons {r.summary['skip_reasons'] if r.summary else None}; "
                    f"{len(problems)} imprecise outcomes; traceback: {'Traceback' in r.stderr}",
                )
            )
            details += changed + problems
        if "fuzz" in only and args.fuzz:
            timed(f"keyword fuzz x {args.fuzz}")
            z = F.fuzz_keywords(work / "fuzz", args.fuzz, seed=args.seed)
            rows.append(
                (
                    "keyword fuzz (write_keywords + exiftool)",
                    z["examples"],
                    z["examples"],
                    len(z["problems"]),
                    0,
                    f"written {z['written']}, refused as bad-keyword {z['rejected']}",
                )
            )
            details += z["problems"]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    header = ("fault kind", "faults injected", "files checked", "files damaged (must be 0)", "leftovers", "notes")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
    print()
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " | " + header[5])
    print("-|-".join("-" * w for w in widths) + "-|-" + "-" * 5)
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " | " + r[5])
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if details:
        print("\nproblems:")
        for d in details[:50]:
            print(f"  {d}")
    return 1 if any(r[3] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
