"""Scenario 2: a full disk, simulated with RLIMIT_FSIZE (writes past the limit fail with EFBIG; SIGXFSZ
is ignored so the process is not killed). No tmpfs or loop mount is needed, so this runs unprivileged.

* photos: a file that cannot be rewritten is skipped as ``write-failed`` ("File too large") with its
  bytes untouched, the others are written, the run ends with exit code 3 ("finished but some files
  were skipped or failed", rtagx/cli.py).
* cache: the cache cannot grow mid-run, or cannot even be created: one ``rtagx: error:`` line, exit
  code 1 (fatal), no photo damaged; a later run without the limit recovers.
"""

from __future__ import annotations

import faultlib


def test_photo_folder_full_skips_with_reason_and_keeps_originals(model, tmp_path) -> None:
    out = faultlib.disk_full_photos(tmp_path, model)
    run = out["run"]
    assert run.rc == 3, run.describe()
    assert "Traceback" not in run.stderr
    assert out["over_limit"], "the scenario needs photos larger than the limit"
    assert out["faults"] >= len(out["over_limit"])
    assert out["problems"] == []
    assert out["damaged"] == []
    assert out["leftovers"] == []
    assert run.summary["skip_reasons"] == {"write-failed": out["faults"]}


def test_cache_disk_full_is_one_line_exit_1_and_recoverable(model, tmp_path) -> None:
    out = faultlib.disk_full_cache(tmp_path, model)
    assert out["warm"].rc == 0, out["warm"].describe()
    mid, start = out["mid"], out["start"]
    # mid-run: the database cannot grow past its size after the warm-up run
    assert mid.rc == 1, mid.describe()
    assert faultlib.one_line_error(mid.stderr), mid.describe()
    assert "cache" in mid.stderr
    # before the run: not even the cache's shared-memory file can be made
    assert start.rc == 1, start.describe()
    assert faultlib.one_line_error(start.stderr), start.describe()
    assert start.files == [], "a run that cannot open its cache must not touch any file"
    assert out["damaged"] == []
    assert out["cache_mid"] == "ok" and out["cache_final"] == "ok"
    # recovery: the next run finishes the job, the one after has nothing left to do
    rec, again = out["recover"], out["again"]
    assert rec.rc == 0 and rec.summary["skipped"] == 0, rec.describe()
    assert again.rc == 0 and again.summary["embedded"] == 0 and again.summary["written"] == 0, again.describe()
    assert again.summary["unchanged"] == out["files"]
    assert out["leftovers"] == [] and out["cache_leftovers"] == []
