"""Run bookkeeping shared by threads: the decode pool and the writer thread add to the same timings."""

from __future__ import annotations

import threading

from rtagx.run.events import Timer, add_time


def test_times_added_from_many_threads_lose_nothing() -> None:
    """Decode threads each add their seconds to one ``timings`` dict: a read-modify-write without the
    lock loses additions when two threads interleave (the drift bug of the first wave)."""
    timings: dict[str, float] = {}
    threads, per_thread = 8, 5_000
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(per_thread):
            add_time(timings, "decode", 1.0)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert timings["decode"] == threads * per_thread


def test_timer_adds_its_span_to_the_named_entry() -> None:
    timings = {"encode": 1.0}
    with Timer(timings, "encode"):
        pass
    with Timer(timings, "store"):
        pass
    assert timings["encode"] >= 1.0 and "store" in timings and timings["store"] >= 0.0
