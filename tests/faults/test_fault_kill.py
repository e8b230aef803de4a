"""Scenario 1: ``kill -9`` at random moments never damages a photo, never leaves a half-written keyword
set, never breaks the cache, and the next complete run finishes the job exactly once.

N (default 50) scales with ``RTAGX_FAULT_KILLS``; ``bench/faults.py --kills`` runs the same code.
"""

from __future__ import annotations

import faultlib
import pytest


def test_kill9_at_random_moments_damages_nothing(model, tmp_path) -> None:
    kills = faultlib.fault_count()
    stats = faultlib.kill_lanes(tmp_path, model, kills, lanes=2, seed=20261123)
    print(
        f"\nkill -9: {stats['kills']} kills, {stats['finished_before_kill']} runs finished first, "
        f"phases {stats['phases']}, {stats['checks']} checks x {stats['files'] // 2} files, "
        f"temp leftovers seen after kills: {sorted(stats['leftover_names'])}"
    )
    assert stats["kills"] + stats["finished_before_kill"] == kills
    assert stats["damaged"] == []
    assert stats["bad_keywords"] == []
    assert stats["bad_cache"] == []
    assert stats["unknown_leftovers"] == []
    # the final complete runs: the first finishes the job, the second finds nothing to do
    summaries = stats["final_summaries"]
    assert all(rc in (0, 3) for rc in stats["final_rc"]), stats["final_describe"]
    for first, second in zip(summaries[0::2], summaries[1::2]):
        assert first is not None and second is not None, stats["final_describe"]
        assert second["embedded"] == 0 and second["written"] == 0, second
        assert second["skip_reasons"] in ({}, {"corrupt": 1}), second
        assert second["unchanged"] + second["skipped"] == second["seen"], second
    assert stats["final_mismatch"] == []
    assert stats["final_cache"] and set(stats["final_cache"]) == {"ok"}
    assert stats["cache_leftovers"] == []
    assert stats["leftovers_after_final"] == []


def test_temp_file_of_a_killed_write_is_cleaned_up(model, tmp_path) -> None:
    """SIGSTOP rtagx the moment one of its temp files exists, SIGKILL it, then run again to completion."""
    result = faultlib.targeted_tmp_kill(tmp_path, model)
    assert result["damaged"] == []
    assert result["cache"] == "ok"
    assert result["rerun_rc"] in (0, 3), result["rerun_describe"]
    if not result["caught"]:
        pytest.skip(f"never caught a temp file in {result['tries']} runs")
    assert result["left_after_kill"], result
    assert result["left_after_rerun"] == [], f"left behind after a complete run: {result['left_after_rerun']}"
