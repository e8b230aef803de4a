"""The local executor of the embed stages: a thread pool decodes ahead (bounded window), the calling
thread builds batches and runs the image tower, and a background thread stores vectors and writes
keywords behind it. A distributed executor runs the same stage functions (see ``run/stages.py``).

On the CPU the helpers are kept off the encoder's cores (issue 16). Measured before: the embed stage
ran at 74% of the warm encoder-only rate on web-size JPEGs (2 cores, bf16 ViT-B-16 on AMX) with the
encoder busy 98% of the stage, while decoding costs 1.4 ms and writing 1.3 ms per image against ~30
ms of encoding. Profile (``bench/executor_ab.py``, 96 web JPEGs, old and new interleaved in one
process): with the old executor 88% of decoding and 88% of writing ran inside encode calls, and the
process burnt 230 ms of CPU per image against 198 ms for the encoder alone, although decoding and
writing are ~3 ms of work per image; so the loss is when the helpers run, not what they do: torch's OpenMP team (one thread per core) stalls at its next
barrier when a helper takes one of its cores, and a helper running Python holds the GIL that the
encoder thread needs between operators (handed over after up to 5 ms). Hence, on the CPU only:

* :class:`EncodeGate`: decode and write threads start new work only between batches, when decoding
  a batch takes under ``GATE_SHARE`` of encoding it (web JPEGs ~2%); 12-MP JPEGs (~40-50%) keep
  overlapping, since serialising them would add their whole decode time;
* the GIL switch interval is ``SWITCH_INTERVAL`` while embedding.

With the gate (same run): 41% of decoding and 64% of writing inside encode calls (the first batch
and decodes already running when it closes), 160 ms of CPU per image against 219 ms alone.

Niceness was tried and dropped: a write thread at nice +10 took 6.5-8.5 s instead of 0.5-1.4 s for
48 files on the shared build machine (load ~10: other processes take its turns), with no gain that
could be measured; niced decoders lose the same way where decoding is the bound.

Measured against the encoder alone in the same minutes (``bench/throughput.py``'s per-round rows;
a shared VM's speed drifts up to 2x between phases of a run): web-size JPEGs reach 92-101% of the
warm encoder-only rate in the steady state. On 2 cores a 12-MP JPEG costs ~33 core-ms to decode
(libjpeg's entropy decoding of 3.6 MB, which DCT draft mode cannot skip) and ~12 to rewrite with its
keywords, against ~60 core-ms to encode, so that set is bounded by CPU time at ~55-70% of the
encoder-only rate whatever the scheduling (measured: 55-70%). Figures and the commands that
reproduce them: README, Performance. ``wait-decode`` / ``wait-write`` in a run's timings say how
long the encoder thread waited for its inputs and for the writer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import Store, open_store
from rtagx.errors import CacheError, FileSkip
from rtagx.imaging import decode
from rtagx.model.encoder import Encoder
from rtagx.run.events import RunEvents, RunSummary, Timer, add_time, report_skip
from rtagx.run.stages import (
    PERMANENT_FAILURES,
    FileWork,
    decode_file,
    encode_batch,
    ensure_fingerprints,
    store_batch,
)
from rtagx.run.tagger import Tagger
from rtagx.settings import Settings

#: Files whose decoder thread never returned (``settings.decode_timeout``); the CLI exits without
#: waiting for those threads.
STUCK_DECODERS: list[Path] = []


def bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any], window: int
) -> Iterator[tuple[Any, Future]]:
    """Like ``pool.map`` but with at most ``window`` items in flight: memory stays flat on any run."""
    pending: deque[tuple[Any, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


#: the gate closes while encoding when decoding a batch takes less than this share of encoding it
GATE_SHARE = 0.15
#: GIL switch interval while embedding on the CPU (CPython's default is 5 ms): a helper thread
#: running Python hands the GIL back to the encoder within this time when it wants it
SWITCH_INTERVAL = 0.0005


class EncodeGate:
    """Keeps helper threads off the cores while the encoder runs, when that costs nothing.

    On the CPU the image tower runs as a team of OpenMP threads, one per core: a decode or write
    thread that takes a core from one of them stalls the whole team at the next barrier (the other
    threads spin there), and a helper holding the GIL delays the encoder's next operator. When
    decoding a batch takes a small share of encoding one (web-size JPEGs: about 1.4 ms against
    30 ms per image), it is cheaper to decode and write *between* batches: the gate is closed while
    a batch encodes, and helpers start new work only while it is open. When decoding is expensive
    (12-MP JPEGs) it must overlap with encoding or it would add its whole time: the gate stays open.
    The choice is made per batch from the measured decode and encode times (``share``)."""

    def __init__(self, workers: int, batch_size: int, share: float = GATE_SHARE) -> None:
        self._open = threading.Event()
        self._open.set()
        self.workers = max(1, workers)
        self.batch_size = batch_size
        self.share = share
        self.decode_seconds = 0.0
        self.decoded = 0
        self.encode_seconds = 0.0
        self.encoded = 0

    def wait(self) -> None:
        """Called by a helper before it starts a piece of work."""
        self._open.wait()

    def worth_closing(self) -> bool:
        """Would decoding a batch between batches add less than ``share`` of an encode's time?"""
        if self.share <= 0 or self.decoded < self.workers or not self.encoded:
            return False
        per_batch_decode = self.decode_seconds / self.decoded * self.batch_size / self.workers
        per_batch_encode = self.encode_seconds / self.encoded * self.batch_size
        return per_batch_decode < self.share * per_batch_encode

    @contextlib.contextmanager
    def encoding(self, images: int) -> Iterator[None]:
        close = self.worth_closing()
        if close:
            self._open.clear()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.encode_seconds += time.perf_counter() - t
            self.encoded += images
            self._open.set()


def default_workers(device: str = "cpu") -> int:
    """Decode threads. On the CPU the image tower needs the cores, and decoding is a small share of
    the work (draft-mode JPEG): one thread per core, at most 8. A GPU encodes hundreds of images per
    second and decoding becomes the limit: every core, at most 32."""
    cores = os.cpu_count() or 2
    if device in ("cuda", "mps"):
        return max(2, min(32, cores))
    return max(1, min(8, cores))


class BatchWriter:
    """Stores encoded batches and writes their keywords on one background thread, so that the encoder
    never waits for SQLite or file writes.

    A bounded queue (``depth`` batches) keeps memory flat: when writing falls behind, the encoder
    blocks on :meth:`put` instead of piling up vectors. Everything that reports a file (skips,
    outcomes, progress) goes through the same queue, so events stay in order and come from one thread.
    The thread opens its own connection to the cache (a sqlite3 connection belongs to the thread that
    made it) and uses a shallow copy of the tagger bound to it; it is the only thread that touches the
    cache while embedding. The metadata writers are not shared with any other thread.
    """

    def __init__(
        self,
        tagger: Tagger,
        summary: RunSummary,
        events: RunEvents,
        depth: int = 3,
        gate: EncodeGate | None = None,
    ) -> None:
        import queue

        self._queue: Any = queue.Queue(maxsize=max(1, depth))
        self._gate = gate
        self._tagger = tagger
        self._summary = summary
        self._events = events
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rtagx-write", daemon=True)
        self._thread.start()

    def put(self, item: tuple[Any, ...]) -> None:
        """Queue ("batch", works, vectors) or ("skip", path, reason, detail[, scanned file]); blocks
        while full. A skip with its scanned file and a permanent reason is remembered in the cache."""
        import queue

        while True:
            if self.error is not None:
                raise self.error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise CacheError("the cache writer stopped unexpectedly") from None

    def close(self) -> None:
        """Write everything queued, stop the thread, and raise what it failed with."""
        if self._thread.is_alive():
            self.put(("stop",))
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        import copy

        store: Store | None = None
        try:
            store = open_store(self._tagger.store.path)
            tagger = copy.copy(self._tagger)
            tagger.store = store
            summary, events = self._summary, self._events
            while True:
                item = self._queue.get()
                if item[0] == "stop":
                    return
                if self.error is not None:
                    continue
                if item[0] == "skip":
                    report_skip(item[1], item[2], item[3], summary, events)
                    if len(item) > 4 and item[2] in PERMANENT_FAILURES:  # not retried until the file changes
                        f = item[4]
                        store.put_failures(
                            [(f.path, f.size, f.mtime_ns, item[2], item[3])], decoder=decode.DECODER_REVISION
                        )
                    continue
                _, works_b, vectors = item
                with Timer(summary.timings, "store"):
                    store_batch(store, tagger.model_id, works_b, vectors)
                summary.embedded += len(works_b)
                events.progress("embed", len(works_b))
                # Vectors are stored at once (a few ms; a run stopped later keeps them); scoring and
                # writing keywords wait for the gate (between batches, when decoding is cheap).
                if self._gate is not None:
                    self._gate.wait()
                tagger.handle(works_b, vectors, embedded=True)
        except BaseException as e:  # handed to the main thread on its next put/close
            self.error = e
            while True:  # keep draining so that a blocked put() wakes up
                try:
                    if self._queue.get(timeout=0.5)[0] == "stop":
                        break
                except Exception:  # queue.Empty: nobody is putting any more
                    break
        finally:
            if store is not None:
                store.close()


def embed(
    tagger: Tagger,
    encoder: Encoder,
    works: list[FileWork],
    settings: Settings,
    summary: RunSummary,
    events: RunEvents,
    dry_run: bool,
    decoded: Callable[[FileWork], np.ndarray] | None = None,
) -> None:
    """Decode, encode, store and write, overlapped: a thread pool decodes ahead (bounded window), the
    calling thread only builds batches and runs the image tower, and :class:`BatchWriter` stores
    vectors and writes keywords behind it. On Ctrl-C every batch already encoded is still stored.
    ``decoded``: each file's array when another stage decoded it already (several models in one
    run share one decode per file; it raises what the decode raised)."""
    spec = decode.PreprocessSpec.from_model(encoder.model)
    max_mp = settings.max_megapixels or decode.DEFAULT_MAX_MEGAPIXELS
    batch_size = settings.batch_size or (16 if encoder.device == "cpu" else 128)
    workers = settings.workers or default_workers(encoder.device)

    on_cpu = encoder.device == "cpu"
    gate = EncodeGate(workers, batch_size, GATE_SHARE) if on_cpu else None

    def load(work: FileWork) -> np.ndarray:
        if decoded is not None:  # decoded already (several models share one decode of each file)
            return decoded(work)
        if gate is not None:
            gate.wait()
        t = time.perf_counter()
        try:
            return decode_file(work, spec, max_mp)
        finally:  # decode threads add under a lock: no second is lost
            dt = time.perf_counter() - t
            add_time(summary.timings, "decode", dt)
            summary.count_decoded()
            if gate is not None:
                gate.decode_seconds += dt  # a lost update under a race only blurs an average
                gate.decoded += 1

    ensure_fingerprints(works)
    events.stage("embed", len(works))
    writer = BatchWriter(tagger, summary, events, gate=gate)
    batch: list[tuple[FileWork, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        with Timer(summary.timings, "encode"), gate.encoding(len(batch)) if gate else contextlib.nullcontext():
            vectors = encode_batch(encoder, [a for _, a in batch], spec)
        t = time.perf_counter()
        writer.put(("batch", [w for w, _ in batch], vectors))
        add_time(summary.timings, "wait-write", time.perf_counter() - t)
        batch.clear()

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtagx-decode")
    switch_interval = sys.getswitchinterval()
    if on_cpu:
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL))
    timed_out = 0
    try:
        for work, future in bounded_map(pool, load, works, window=max(batch_size * 2, workers * 4)):
            try:
                t = time.perf_counter()
                array = future.result(timeout=settings.decode_timeout)
                add_time(summary.timings, "wait-decode", time.perf_counter() - t)
            except FutureTimeout:
                # A decoder that loops must not stop the run: skip the file; its thread is
                # abandoned (Python cannot kill it) and the process exits without waiting for it.
                timed_out += 1
                STUCK_DECODERS.append(work.file.path)
                writer.put(
                    (
                        "skip",
                        work.file.path,
                        "decode-timeout",
                        f"decoding took longer than {settings.decode_timeout:g} s (decode-timeout setting)",
                    )
                )
                continue
            except FileSkip as e:
                writer.put(("skip", work.file.path, e.reason, e.detail, work.file))
                continue
            except Exception as e:  # a decoder bug must not stop the run
                writer.put(("skip", work.file.path, "decode-failed", f"{type(e).__name__}: {e}"))
                continue
            batch.append((work, array))
            if len(batch) >= batch_size:
                flush()
        flush()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(BaseException):  # the first error is the one to report
            writer.close()  # keep every batch already encoded
        raise
    finally:
        sys.setswitchinterval(switch_interval)
    pool.shutdown(wait=not timed_out, cancel_futures=bool(timed_out))
    writer.close()
