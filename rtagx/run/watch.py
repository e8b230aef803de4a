"""``rtagx watch``: tag photos as they land, with the model kept loaded between rounds.

A :class:`Watcher` catches up like ``tag`` over its roots, then follows file-system events (watchdog:
inotify, FSEvents, ReadDirectoryChangesW, or its polling observer for network mounts). An event only
makes a path a *candidate*; a candidate is *ready* once its size and mtime have not moved for
``settle`` seconds (and, where the platform reports it, the writer has closed it). Ready files are
tagged in rounds of at most ``round_files`` by :func:`run_tag` on those paths, so every rule of
``tag`` holds: the cache, ownership of keywords, atomic writes, and the writer lock taken only for the
round (a ``retag`` or a nightly ``tag`` runs beside the watcher; while one holds the lock, rounds wait).

- A file that does not decode yet (half-copied) is skipped in that round and becomes a candidate again
  when it changes; nothing is skipped for good.
- rtagx's own writes do not start a round: a ready file whose size and mtime are what the cache
  recorded right after rtagx wrote it is dropped (run_tag's own no-op check is the second guard).
- Moves reuse the cache (content fingerprints); deleted files are forgotten; an edited vocabulary or
  config file is reloaded and every root re-scored from the cache (no image is decoded again); a root
  that disappears (an unmounted disk) is watched for, and caught up when it comes back.
- :meth:`Watcher.stop` (signal-safe) ends the loop after the round in flight.

The library never prints: rounds are reported through ``on_round``, files through :class:`RunEvents`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtagx.cache.store import open_store, path_key
from rtagx.errors import LockBusyError, RtagxError, UsageError
from rtagx.model.loaded import LoadedModels
from rtagx.run.common import check_paths, load_vocabulary_for, open_locked
from rtagx.run.events import RunEvents, RunSummary
from rtagx.run.scan import ScannedFile, scan_with_settings, scan_would_yield, selected_extensions
from rtagx.run.tag import run_tag
from rtagx.settings import Settings, validate_settings

#: How long a round that failed (busy cache, broken vocabulary) waits before it is tried again.
RETRY_SECONDS = 30.0
#: A file the platform says is still open for writing is trusted to be complete after this long still.
OPEN_FOR_WRITING_GRACE = 60.0
#: watchdog's only word that the kernel dropped events (a huge burst): a warning on this logger.
OVERFLOW_LOGGER, OVERFLOW_MESSAGE = "watchdog.observers.inotify_c", "Inotify queue overflowed"
_OVERFLOW = object()  # put in the inbox when events were lost


class _OverflowListener(logging.Handler):
    """Turns watchdog's "events were lost" warning into an inbox item: the roots are caught up."""

    def __init__(self, inbox: queue.SimpleQueue[Any]) -> None:
        super().__init__(logging.WARNING)
        self.inbox = inbox

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(OVERFLOW_MESSAGE):
            self.inbox.put(_OVERFLOW)


@dataclass
class WatchOptions:
    """How the watcher waits. ``poll``: seconds between scans with watchdog's polling observer (for
    network mounts, where no events arrive); None uses the platform's native events."""

    settle: float = 2.0
    poll: float | None = None
    round_files: int = 128
    check_every: float = 2.0  # roots and settings files are looked at this often
    dry_run: bool = False


@dataclass
class Round:
    """One call of ``run_tag`` (or one batch of forgotten deletions)."""

    number: int
    kind: str  # catch-up, new, reload, root-back, overflow, forget
    files: int  # paths handed to run_tag (roots for catch-up kinds), or files forgotten
    summary: RunSummary
    started_at: float  # time.time()
    roots: list[Path] = field(default_factory=list)


@dataclass
class WatchResult:
    """What a watcher did from start to stop: the sum of its rounds."""

    total: RunSummary
    rounds: int = 0
    forgotten: int = 0


@dataclass
class _Candidate:
    signature: tuple[int, int] | None
    since: float
    writing: bool


def add_summary(total: RunSummary, part: RunSummary) -> None:
    """Fold one round's counts and stage times into the watcher's total."""
    for name in ("seen", "embedded", "reused", "tagged", "written", "unchanged", "skipped", "left_untagged", "decoded"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.encoder_backend = part.encoder_backend or total.encoder_backend  # the latest round's word
    total.skip_reasons.update(part.skip_reasons)
    for stage, seconds in part.timings.items():
        total.timings[stage] = total.timings.get(stage, 0.0) + seconds
    total.interrupted = total.interrupted or part.interrupted


def _import_watchdog() -> Any:
    try:
        import watchdog.events
        import watchdog.observers
        import watchdog.observers.polling
    except ImportError:
        raise UsageError("rtagx watch needs the watchdog package: pip install 'rtagx[watch]'") from None
    return watchdog


class Watcher:
    """Watch ``paths`` (folders) and tag what lands in them. See the module docstring.

    ``settings`` is a :class:`Settings` or a function that builds one (called again when
    ``config_path`` or the vocabulary file changes). Use from Python::

        watcher = Watcher([Path("~/Pictures")], settings)
        threading.Timer(60, watcher.stop).start()
        result = watcher.run()
    """

    def __init__(
        self,
        paths: Sequence[Path],
        settings: Settings | Callable[[], Settings],
        *,
        options: WatchOptions | None = None,
        events: RunEvents | None = None,
        on_round: Callable[[Round], None] | None = None,
        config_path: Path | None = None,
        models: LoadedModels | None = None,
    ) -> None:
        self.options = options or WatchOptions()
        self.events = events or RunEvents()
        self.on_round = on_round
        self.config_path = Path(config_path).expanduser() if config_path else None
        self.models = models or LoadedModels()
        self._settings_source = settings if callable(settings) else None
        self.settings: Settings = settings() if callable(settings) else settings
        self.roots = check_paths(paths)
        for root in self.roots:
            if not root.is_dir():
                raise UsageError(f"rtagx watch follows folders: {root} is not a folder (use `rtagx tag` for files)")
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = False
        self._pending: dict[Path, _Candidate] = {}
        self._ready: dict[Path, None] = {}  # ordered set
        self._gone_files: set[Path] = set()
        self._gone_dirs: set[Path] = set()
        self._gone_since = 0.0
        self._root_ids: dict[Path, tuple[int, int] | None] = {}
        self._watches: dict[Path, Any] = {}
        self._catch_up: dict[Path, str] = {}  # roots due for a catch-up round, with the reason
        self._retry_at = 0.0
        self._next_check = 0.0
        self._busy_reported = False
        self._settings_files_sig: Any = None
        self._reload_at: float | None = None
        self._tracks_close = False
        self._observer: Any = None
        self._overflow_listener = _OverflowListener(self._inbox)
        self.in_round = False
        self.round_kind = ""
        self.result = WatchResult(RunSummary(dry_run=self.options.dry_run))

    # -- control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """End after the round in flight. Safe to call from a signal handler or another thread."""
        self._stopping = True
        self._inbox.put(None)  # SimpleQueue.put is reentrant: wakes the loop at once

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> WatchResult:
        """Catch up, then follow events until :meth:`stop`. Returns the total of every round."""
        started = time.perf_counter()
        watchdog = _import_watchdog()
        self._start_observer(watchdog)
        try:
            self._settings_files_sig = self._settings_files_signature()
            self._catch_up = {root: "catch-up" for root in self.roots}
            self._run_catch_up(first=True)
            while not self._stopping:
                self._step()
            if self._gone_files or self._gone_dirs:
                self._forget()  # deletions seen before the stop request
        except KeyboardInterrupt:  # a second Ctrl-C: run_tag already kept every finished batch
            self.result.total.interrupted = True
        finally:
            self._stop_observer()
            self.result.total.wall_seconds = time.perf_counter() - started
        return self.result

    def _step(self) -> None:
        opts = self.options
        busy = bool(self._pending or self._ready or self._gone_files or self._gone_dirs)
        timeout = min(0.5, max(0.05, opts.settle / 4)) if busy else opts.check_every
        self._drain(timeout)
        if self._stopping:
            return
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + opts.check_every
            self._check_roots()
            self._check_settings_files(now)
        if self._reload_at is not None and now >= self._reload_at:
            self._reload()
        self._settle(now)
        if now < self._retry_at:
            return
        if self._catch_up:
            self._run_catch_up(first=False)
        elif self._ready:
            self._run_new()
        elif (self._gone_files or self._gone_dirs) and now - self._gone_since >= opts.settle:
            self._forget()

    # -- events ----------------------------------------------------------------------------------
    def _start_observer(self, watchdog: Any) -> None:
        if self.options.poll:
            self._observer = watchdog.observers.polling.PollingObserver(timeout=self.options.poll)
        else:
            self._observer = watchdog.observers.Observer()
        # Only inotify reports "closed after writing"; elsewhere settling alone decides.
        self._tracks_close = type(self._observer).__name__.startswith("Inotify")
        for root in self.roots:
            self._root_ids[root] = self._identity(root)
            self._schedule(root)
        logging.getLogger(OVERFLOW_LOGGER).addHandler(self._overflow_listener)
        self._observer.start()

    def _schedule(self, root: Path) -> None:
        import watchdog.events as ev

        inbox = self._inbox

        class Handler(ev.FileSystemEventHandler):
            def dispatch(self, event: Any) -> None:  # runs on the observer's thread
                inbox.put(event)

        wanted = [
            ev.FileCreatedEvent,
            ev.FileModifiedEvent,
            ev.FileClosedEvent,
            ev.FileDeletedEvent,
            ev.FileMovedEvent,
            ev.DirCreatedEvent,
            ev.DirDeletedEvent,
            ev.DirMovedEvent,
        ]
        try:
            follow = {"follow_symlink": True} if self.settings.follow_symlinks else {}  # watchdog >= 5
            self._watches[root] = self._observer.schedule(
                Handler(), str(root), recursive=True, event_filter=wanted, **follow
            )
        except OSError as e:
            hint = ""
            if e.errno in (28, 24):  # ENOSPC / EMFILE from inotify
                hint = " (the inotify watch limit: raise fs.inotify.max_user_watches, or use --poll SECONDS)"
            raise RtagxError(f"cannot watch {root}: {e.strerror or e}{hint}") from None

    def _unschedule(self, root: Path) -> None:
        watch = self._watches.pop(root, None)
        if watch is not None:
            with contextlib.suppress(Exception):  # its emitter already stopped with the folder it watched
                self._observer.unschedule(watch)

    def _stop_observer(self) -> None:
        logging.getLogger(OVERFLOW_LOGGER).removeHandler(self._overflow_listener)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def _drain(self, timeout: float) -> None:
        """Take every queued event; wait up to ``timeout`` for the first."""
        try:
            event = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if event is _OVERFLOW:
                if not self._catch_up:
                    self.events.message("file-system events were lost (a very large burst); catching up")
                self._catch_up.update((root, "overflow") for root in self.roots if root not in self._catch_up)
            elif event is not None:
                self._apply(event)
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _apply(self, event: Any) -> None:
        kind = event.event_type
        src = Path(os.fsdecode(event.src_path)) if event.src_path else None
        dest = Path(os.fsdecode(event.dest_path)) if getattr(event, "dest_path", "") else None
        if event.is_directory:
            if kind in ("deleted", "moved") and src is not None:
                self._note_gone(src, folder=True)
            if kind == "created" and src is not None:
                self._add_folder(src)
            if kind == "moved" and dest is not None:
                self._add_folder(dest)
            return
        if kind in ("deleted", "moved") and src is not None:
            self._note_gone(src, folder=False)
        if kind == "moved" and dest is not None:
            self._touch(dest, writing=False)
        elif kind == "created" and src is not None:
            self._touch(src, writing=None)  # a hard link or an empty file gets no "closed" event
        elif kind == "modified" and src is not None:
            self._touch(src, writing=self._tracks_close or None)  # written to: wait for "closed"
        elif kind == "closed" and src is not None:
            self._touch(src, writing=False)

    def _root_of(self, path: Path) -> Path | None:
        best = None
        for root in self.roots:
            if (path == root or root in path.parents) and (best is None or len(root.parts) > len(best.parts)):
                best = root
        return best

    def _wanted(self, path: Path) -> bool:
        root = self._root_of(path)
        if root is None or path == root or self._root_ids.get(root) is None:
            return False
        s = self.settings
        return scan_would_yield(path, root, selected_extensions(s), exclude=s.exclude, include_hidden=s.include_hidden)

    def _touch(self, path: Path, *, writing: bool | None) -> None:
        """Make ``path`` a candidate (again). ``writing``: True while its writer has it open, False
        once closed, None when the event does not say."""
        if not self._wanted(path):
            return
        self._ready.pop(path, None)
        self._gone_files.discard(path)
        c = self._pending.get(path)
        if c is None:  # its state now: it is ready ``settle`` seconds from here if nothing moves
            try:
                st = os.stat(path)
            except OSError:
                return
            self._pending[path] = _Candidate((st.st_size, st.st_mtime_ns), time.monotonic(), bool(writing))
        elif writing is not None:
            c.writing = writing

    def _add_folder(self, folder: Path) -> None:
        """A folder created or moved in: its files may have come without events of their own."""
        root = self._root_of(folder)
        if root is None or self._root_ids.get(root) is None:
            return
        for item in scan_with_settings([folder], self.settings):
            if isinstance(item, ScannedFile) and self._wanted(item.path):
                self._touch(item.path, writing=False)

    def _note_gone(self, path: Path, *, folder: bool) -> None:
        root = self._root_of(path)
        if root is None or path == root:
            return  # a root's own disappearance is not a deletion of its photos (see _check_roots)
        if folder:
            self._gone_dirs.add(path)
            for p in [p for p in self._pending if path in p.parents]:
                del self._pending[p]
            for p in [p for p in self._ready if path in p.parents]:
                del self._ready[p]
        elif self._wanted(path):
            self._pending.pop(path, None)
            self._ready.pop(path, None)
            self._gone_files.add(path)
        else:
            return
        self._gone_since = time.monotonic()

    # -- settling --------------------------------------------------------------------------------
    def _settle(self, now: float) -> None:
        """Move candidates whose size and mtime held still for ``settle`` seconds to the ready set."""
        settle = self.options.settle
        for path, c in list(self._pending.items()):
            try:
                st = os.stat(path)
            except OSError:
                del self._pending[path]  # gone again (a deletion event says so too)
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if signature != c.signature:
                c.signature, c.since = signature, now
                continue
            quiet = now - c.since
            if quiet >= settle and (not c.writing or quiet >= max(OPEN_FOR_WRITING_GRACE, 10 * settle)):
                del self._pending[path]
                self._ready[path] = None

    def _drop_own_writes(self, paths: list[Path]) -> list[Path]:
        """Paths whose size and mtime are what rtagx recorded right after writing them: no new round."""
        try:
            store = open_store(self.settings.cache_path(), readonly=True)
        except RtagxError:
            return paths
        try:
            written = store.written(path_key(p) for p in paths)
        finally:
            store.close()
        keep = []
        for p in paths:
            rec = written.get(path_key(p))
            if rec is not None:
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                if (rec.size, rec.mtime_ns) == (st.st_size, st.st_mtime_ns):
                    continue
            keep.append(p)
        return keep

    # -- rounds ----------------------------------------------------------------------------------
    def _round_settings(self) -> Settings:
        # Never block in the lock: a busy cache postpones the round, and a stop request still works.
        return dataclasses.replace(self.settings, no_wait=True)

    def _run(self, kind: str, paths: list[Path]) -> RunSummary | None:
        """One run_tag; None when it could not run (busy cache, a broken vocabulary: retried later)."""
        self.in_round, self.round_kind = True, kind
        started_at = time.time()
        try:
            try:
                summary = run_tag(
                    paths, self._round_settings(), dry_run=self.options.dry_run, events=self.events, models=self.models
                )
            except UsageError:
                present = [p for p in paths if os.path.lexists(p)]
                if present == paths or not present:
                    raise
                paths = present  # one vanished between settling and the round
                summary = run_tag(
                    paths, self._round_settings(), dry_run=self.options.dry_run, events=self.events, models=self.models
                )
        except LockBusyError:
            self._retry_at = time.monotonic() + 1.0
            if not self._busy_reported:
                self._busy_reported = True
                self.events.message("another rtagx holds the cache; new photos wait for it")
            return None
        finally:
            self.in_round = False
        self._busy_reported = False
        add_summary(self.result.total, summary)
        self.result.rounds += 1
        if self.on_round:
            roots = paths if kind != "new" else []
            self.on_round(Round(self.result.rounds, kind, len(paths), summary, started_at, roots))
        return summary

    def _run_catch_up(self, *, first: bool) -> None:
        roots = [r for r in self._catch_up if self._root_ids.get(r) is not None]
        if not roots:
            self._catch_up.clear()
            return
        kinds = {self._catch_up[r] for r in roots}
        kind = kinds.pop() if len(kinds) == 1 else "catch-up"
        try:
            done = self._run(kind, roots)
        except RtagxError as e:
            if first:
                raise  # a watcher that cannot start says so, like `tag`
            self._postpone(kind, e)
            return
        if done is not None:
            for r in roots:
                self._catch_up.pop(r, None)

    def _run_new(self) -> None:
        batch: list[Path] = []
        while self._ready and len(batch) < self.options.round_files:  # after a catch-up most are its own writes
            take = list(self._ready)[: self.options.round_files - len(batch)]
            for p in take:
                del self._ready[p]
            batch += self._drop_own_writes([p for p in take if os.path.exists(p)])
        if not batch:
            return
        try:
            done = self._run("new", batch)
        except RtagxError as e:
            done = None
            self._postpone("new", e)
        if done is None:  # back in front of the queue
            self._ready = dict.fromkeys([*batch, *self._ready])

    def _postpone(self, kind: str, error: RtagxError) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self.events.message(f"{kind} round failed: {error}; retrying in {RETRY_SECONDS:g} s or when it is fixed")

    def _forget(self) -> None:
        """Drop deleted files from the cache (under the writer lock, briefly)."""
        files, folders = set(self._gone_files), set(self._gone_dirs)
        self._gone_files.clear()
        self._gone_dirs.clear()
        try:
            store = open_locked(self._round_settings(), self.events)
        except RtagxError as e:  # busy: in a second; a broken cache: reported, tried again later
            self._gone_files |= files
            self._gone_dirs |= folders
            if isinstance(e, LockBusyError):
                self._retry_at = time.monotonic() + 1.0
            else:
                self._postpone("forget", e)
            return
        try:
            keys = {path_key(p) for p in files}
            for folder in folders:
                keys.update(store.files_under(folder))
            gone = [k for k in keys if not os.path.lexists(os.fsdecode(k)) and self._root_alive(k)]
            if gone:
                store.forget_files(gone)
        finally:
            store.close()
        if gone:
            self.result.forgotten += len(gone)
            if self.on_round:
                self.on_round(Round(self.result.rounds, "forget", len(gone), RunSummary(), time.time()))

    def _root_alive(self, key: bytes) -> bool:
        root = self._root_of(Path(os.fsdecode(key)))
        return root is not None and self._identity(root) is not None and self._identity(root) == self._root_ids[root]

    # -- roots and settings ----------------------------------------------------------------------
    @staticmethod
    def _identity(root: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if os.path.isdir(root) else None

    def _check_roots(self) -> None:
        """A root that vanished (unmounted, deleted) is unwatched; when it is back (a new device or
        inode: also a disk mounted over an empty mount point) it is watched again and caught up."""
        alive = {e.watch for e in list(self._observer.emitters) if e.is_alive()}
        for root in self.roots:
            now_id, was_id = self._identity(root), self._root_ids.get(root)
            if now_id == was_id and (now_id is None or self._watches.get(root) in alive):
                continue
            restarted = now_id == was_id  # its event thread died (an error in the backend)
            self._unschedule(root)
            self._root_ids[root] = now_id
            for p in [p for p in self._pending if root in p.parents]:
                del self._pending[p]
            if now_id is None:
                self.events.message(f"{root} is gone (unmounted?); watching for it to come back")
                continue
            try:
                self._schedule(root)
            except RtagxError as e:
                self._root_ids[root] = None
                self.events.message(str(e))
                continue
            self.events.message(
                f"the watch on {root} stopped; watching again and catching up"
                if restarted
                else f"{root} is back; catching up"
            )
            self._catch_up[root] = "root-back"

    def _settings_files(self) -> list[Path]:
        files = [self.config_path] if self.config_path else []
        tags = Path(self.settings.tags).expanduser()
        if tags.suffix or os.sep in self.settings.tags or tags.is_file():  # not a shipped vocabulary's name
            files.append(tags.resolve())
        return files

    def _settings_files_signature(self) -> list[tuple[str, int, int] | None]:
        out: list[tuple[str, int, int] | None] = []
        for p in self._settings_files():
            try:
                st = os.stat(p)
                out.append((str(p), st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    def _check_settings_files(self, now: float) -> None:
        sig = self._settings_files_signature()
        if sig != self._settings_files_sig:
            self._settings_files_sig = sig
            self._reload_at = now + self.options.settle  # an editor may save in several steps

    def _reload(self) -> None:
        """Read the settings (and vocabulary) again; re-score every root with them."""
        self._reload_at = None
        try:
            new = self._settings_source() if self._settings_source else self.settings
            # A value out of range (``margin = 5``) would stop every later round, new photos included:
            # checked here like a broken vocabulary, so the last good settings keep tagging.
            validate_settings(new)
            load_vocabulary_for(new)  # a broken vocabulary keeps the last good settings
        except RtagxError as e:
            self.events.message(f"settings not reloaded, keeping the last good ones: {e}")
            return
        self.settings = new
        self._settings_files_sig = self._settings_files_signature()
        self.events.message("settings changed; re-scoring every root from the cache")
        for root in self.roots:
            self._catch_up[root] = "reload"
        self._retry_at = 0.0


def watch(
    paths: Sequence[Path],
    settings: Settings | Callable[[], Settings],
    *,
    options: WatchOptions | None = None,
    events: RunEvents | None = None,
    on_round: Callable[[Round], None] | None = None,
    config_path: Path | None = None,
    stop: threading.Event | None = None,
) -> WatchResult:
    """Build a :class:`Watcher` and run it until ``stop`` is set (from another thread) or
    :meth:`Watcher.stop` is called."""
    watcher = Watcher(paths, settings, options=options, events=events, on_round=on_round, config_path=config_path)
    if stop is not None:
        event = stop

        def stop_when_set() -> None:
            event.wait()
            watcher.stop()

        threading.Thread(target=stop_when_set, daemon=True).start()
    return watcher.run()


#: Variables a service must carry over from the shell it was printed in (a service manager starts
#: with a bare environment): rtagx's own, where Python finds rtagx, where models and settings live.
SERVICE_ENVIRONMENT = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")


def service_command(argv0: str, args: Sequence[str], paths: Sequence[Path], python: str) -> list[str]:
    """The command line a service runs: this program by absolute path, the same arguments without
    ``--print-service``, the watched folders made absolute."""
    import shutil

    if os.path.basename(argv0) == "__main__.py":
        program = [python, "-m", "rtagx"]
    else:
        program = [os.path.abspath(shutil.which(argv0) or argv0)]
    given = {os.fspath(p) for p in paths}
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--print-service":
            skip = True
            continue
        if arg.startswith("--print-service="):
            continue
        out.append(os.path.abspath(os.path.expanduser(arg)) if arg in given else arg)
    return program + out


def service_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(environ.items()) if k.startswith("RTAGX_") or k in SERVICE_ENVIRONMENT}


def _systemd_quote(arg: str) -> str:
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def service_file(kind: str, command: Sequence[str], cwd: str, environment: dict[str, str]) -> str:
    """A systemd user unit or a launchd agent plist that runs ``command`` (``rtagx watch ...``).

    SIGTERM (what both send to stop a service) finishes the round in flight and exits 0, so a stop
    is never a failure; a crash is restarted."""
    if kind == "systemd":
        env = "".join(f"Environment={_systemd_quote(f'{k}={v}')}\n" for k, v in environment.items())
        return (
            "# rtagx watch as a systemd user service. Save as ~/.config/systemd/user/rtagx-watch.service, then:\n"
            "#   systemctl --user daemon-reload && systemctl --user enable --now rtagx-watch\n"
            "# Log: journalctl --user -u rtagx-watch -f\n"
            "[Unit]\n"
            "Description=rtagx watch: tag photos as they land\n\n"
            "[Service]\n"
            "Type=simple\n"
            f"WorkingDirectory={_systemd_quote(cwd)}\n"
            f"{env}"
            f"ExecStart={' '.join(_systemd_quote(a) for a in command)}\n"
            "KillMode=mixed\n"
            "TimeoutStopSec=300\n"
            "Restart=on-failure\n"
            "RestartSec=30\n"
            "Nice=10\n"
            "IOSchedulingClass=idle\n\n"
            "[Install]\n"
            "WantedBy=default.target\n"
        )
    if kind == "launchd":
        import plistlib

        log = os.path.expanduser("~/Library/Logs/rtagx-watch.log")
        plist: dict[str, Any] = {
            "Label": "org.rtagx.watch",
            "ProgramArguments": list(command),
            "WorkingDirectory": cwd,
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ProcessType": "Background",
            "ExitTimeOut": 300,
            "StandardOutPath": log,
            "StandardErrorPath": log,
        }
        if environment:
            plist["EnvironmentVariables"] = dict(environment)
        return plistlib.dumps(plist, sort_keys=False).decode()
    raise UsageError(f"--print-service must be systemd or launchd, got '{kind}'")
