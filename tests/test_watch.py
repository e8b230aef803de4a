"""`rtagx watch` in a real subprocess with real file-system events (inotify here): photos copied in one
by one and in a burst, a JPEG written slowly and one copied in two halves, a move, a delete, a busy
cache, a folder that goes away and comes back, a vocabulary edit, SIGTERM mid-round. Keywords are read
back with exiftool and compared with what `rtagx tag` writes for the same photos."""

from __future__ import annotations

import json
import logging
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rtagx.cache.store import WriterLock, open_store
from rtagx.cli.commands import cli
from rtagx.run.scan import scan_would_yield
from rtagx.run.watch import service_command, service_file

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool reads back the keywords")
CAMERA = [
    "Canon_40D.jpg",
    "Nikon_D70.jpg",
    "Fujifilm_FinePix_E500.jpg",
    "Pentax_K10D.jpg",
    "Kodak_CX7530.jpg",
    "Olympus_C8080WZ.jpg",
    "Panasonic_DMC-FZ30.jpg",
    "Sony_HDR-HC3.jpg",
    "Ricoh_Caplio_RR330.jpg",
    "Canon_PowerShot_S40.jpg",
]
WAIT = 180.0  # generous: the machine is shared; conditions are polled, never timed


def keywords(path: Path) -> list[str]:
    out = subprocess.run(
        ["exiftool", "-j", "-IPTC:Keywords", "-XMP-dc:Subject", str(path)], capture_output=True, text=True, check=True
    )
    data = json.loads(out.stdout)[0]
    found = []
    for key in ("Keywords", "Subject"):
        value = data.get(key)
        found += [str(v) for v in (value if isinstance(value, list) else [] if value is None else [value])]
    return sorted(set(found))


class Watch:
    """A `rtagx watch --json` subprocess; its stdout lines are read from a file as they come."""

    def __init__(self, tmp: Path, folder: Path, tiny_clip, cache: Path, vocab: Path, *extra: str) -> None:
        cfg, ckpt = tiny_clip
        self.out, self.err = tmp / "watch.out", tmp / "watch.err"
        args = [sys.executable, "-m", "rtagx", "watch", str(folder), "--model", str(cfg), "--pretrained", str(ckpt)]
        args += ["--cache", str(cache), "--tags", str(vocab), "--threshold", "-1", "--top-k", "3", "--json", "--yes"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(tmp / "xdg"), "RTAGX_OFFLINE": "1"}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([*args, *extra], stdout=out, stderr=err, env=env, cwd=tmp)

    def lines(self) -> list[dict]:
        text = self.out.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]

    def files(self) -> list[dict]:
        return [o for o in self.lines() if "action" in o]

    def rounds(self) -> list[dict]:
        return [o for o in self.lines() if "round" in o]

    def by_round(self) -> list[tuple[dict, list[dict]]]:
        """Each round with the file outcomes reported before it (a round's line follows its files)."""
        out, files = [], []
        for o in self.lines():
            if "action" in o:
                files.append(o)
            elif "round" in o:
                out.append((o, files))
                files = []
        return out

    def forgotten(self) -> int:
        return sum(o["forgot"] for o in self.lines() if "forgot" in o)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, what: str, condition: Callable[[], object]) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.out.read_text(errors="replace")[-3000:]
        pytest.fail(f"waited for {what}; exit {self.proc.poll()}\nstdout: {tail}\nstderr: {self.stderr()[-3000:]}")

    def outcomes(self, path: Path) -> list[str]:
        return [o["action"] for o in self.files() if o["path"] == str(path)]

    def written(self, *paths: Path) -> bool:
        return all("written" in self.outcomes(p) for p in paths)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def tag_reference(folder: Path, tiny_clip, vocab: Path, cache: Path) -> dict[str, list[str]]:
    """What `rtagx tag` writes with the same options: keywords per file name."""
    cfg, ckpt = tiny_clip
    args = ["tag", str(folder), "--model", str(cfg), "--pretrained", str(ckpt), "--cache", str(cache)]
    args += ["--tags", str(vocab), "--threshold", "-1", "--top-k", "3", "--yes", "-q"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {p.name: keywords(p) for p in folder.glob("*.jpg")}


def noise_jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def test_watch_tags_what_lands_and_stops_cleanly_on_sigterm(tiny_clip, samples_dir: Path, tmp_path: Path) -> None:
    folder, incoming, reference = tmp_path / "photos", tmp_path / "incoming", tmp_path / "reference"
    for d in (folder, incoming, reference):
        d.mkdir()
    for name in CAMERA:
        shutil.copy2(samples_dir / "jpg" / name, incoming / name)
        shutil.copy2(samples_dir / "jpg" / name, reference / name)
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\nmountain\nbeach\ncar\nfood\nperson\nbuilding\n")
    cache = tmp_path / "cache.sqlite3"
    shutil.copy2(incoming / CAMERA[0], folder / CAMERA[0])  # there before the watcher: the catch-up tags it

    w = Watch(tmp_path, folder, tiny_clip, cache, vocab, "--settle", "1")
    try:
        w.wait_for("the catch-up round", lambda: any(r["kind"] == "catch-up" for r in w.rounds()))
        assert w.written(folder / CAMERA[0])

        # one by one, then a burst
        for name in CAMERA[1:4]:
            shutil.copy(incoming / name, folder / name)
            w.wait_for(f"{name} tagged", lambda name=name: w.written(folder / name))
        for name in CAMERA[4:]:
            shutil.copy(incoming / name, folder / name)
        w.wait_for("the burst tagged", lambda: w.written(*(folder / n for n in CAMERA)))
        expected = tag_reference(reference, tiny_clip, vocab, tmp_path / "reference.sqlite3")
        for name in CAMERA:
            assert keywords(folder / name) == expected[name] and expected[name], name

        # a JPEG written slowly in chunks (a slow card reader): tagged once, when it is whole. On Linux
        # the writer also stalls longer than --settle with the file open: inotify's "closed" decides.
        data = (samples_dir / "jpg" / "Nikon_COOLPIX_P1.jpg").read_bytes()
        slow = folder / "slow.jpg"
        with open(slow, "wb") as f:
            for i, start in enumerate(range(0, len(data), len(data) // 8 + 1)):
                f.write(data[start : start + len(data) // 8 + 1])
                f.flush()
                time.sleep(2.5 if i == 3 and sys.platform.startswith("linux") else 0.4)
        w.wait_for("the slow file tagged", lambda: w.written(slow))
        assert w.outcomes(slow) == ["written"]

        # a hard link (no "closed" event) is tagged after settling like any file
        linked = folder / "linked.jpg"
        os.link(incoming / CAMERA[0], linked)
        w.wait_for("the hard link tagged", lambda: w.outcomes(linked))
        assert w.outcomes(linked) == ["written"]

        # copied in two halves with a pause: the half file does not decode and is retried when it grows
        half = folder / "half.jpg"
        data = (samples_dir / "jpg" / "Konica_Minolta_DiMAGE_Z3.jpg").read_bytes()
        half.write_bytes(data[: len(data) // 2])
        w.wait_for("the half file tried", lambda: w.outcomes(half))
        assert w.outcomes(half) == ["skipped"]
        with open(half, "ab") as f:
            f.write(data[len(data) // 2 :])
        w.wait_for("the completed file tagged", lambda: w.written(half))
        assert w.outcomes(half) == ["skipped", "written"] and keywords(half)

        # a move into a subfolder reuses the cache; the old name is forgotten
        (folder / "sub").mkdir()
        moved = folder / "sub" / "moved.jpg"
        os.rename(folder / CAMERA[1], moved)
        w.wait_for("the moved file handled", lambda: w.outcomes(moved))
        assert w.outcomes(moved) == ["unchanged"] and keywords(moved) == expected[CAMERA[1]]
        w.wait_for("the old name forgotten", lambda: w.forgotten() >= 1)
        move_round = next(r for r in w.rounds() if r["kind"] == "new" and r["files"] == 1 and r["reused"] == 1)
        assert move_round["embedded"] == 0

        # a delete is forgotten by the cache
        gone = folder / CAMERA[2]
        gone.unlink()
        w.wait_for("the delete forgotten", lambda: w.forgotten() >= 2)
        with open_store(cache, readonly=True) as store:
            assert store.file(gone) is None and store.file(folder / CAMERA[1]) is None
            assert store.file(moved) is not None

        # a `tag` or `retag` holding the cache: the new photo waits for it, then is tagged
        lock = WriterLock(cache)
        lock.acquire()
        try:
            waiting = folder / "waiting.jpg"  # the deleted photo's content under a new name
            shutil.copy(incoming / CAMERA[2], waiting)
            w.wait_for("the busy cache reported", lambda: "holds the cache" in w.stderr())
            assert not w.outcomes(waiting)
        finally:
            lock.release()
        w.wait_for("the waiting photo tagged", lambda: w.written(waiting))
        assert keywords(waiting) == expected[CAMERA[2]]

        # the folder goes away (an unmounted disk) and comes back: watched and caught up again
        away = tmp_path / "away"
        os.rename(folder, away)
        w.wait_for("the folder reported gone", lambda: "is gone" in w.stderr())
        os.rename(away, folder)
        w.wait_for("the folder caught up", lambda: any(r["kind"] == "root-back" for r in w.rounds()))
        back = folder / "back.jpg"
        shutil.copy(samples_dir / "jpg" / "Canon_DIGITAL_IXUS_400.jpg", back)
        w.wait_for("a photo in the returned folder tagged", lambda: w.written(back))

        # own writes never start a round; no file was written twice before the vocabulary edit
        writes = Counter(o["path"] for o in w.files() if o["action"] == "written")
        assert max(writes.values()) == 1, writes
        new_rounds = [files for r, files in w.by_round() if r["kind"] == "new"]
        idle = [o["path"] for files in new_rounds for o in files if o["action"] == "unchanged"]
        assert idle == [str(moved)]  # only the move; never a file rtagx had just written

        # a vocabulary edit is reloaded: every file re-scored from the cache (nothing decoded again)
        vocab.write_text(vocab.read_text() + "tree\nsky\nflower\nwater\n")
        w.wait_for("the reload round", lambda: any(r["kind"] == "reload" for r in w.rounds()))
        reload_round = next(r for r in w.rounds() if r["kind"] == "reload")
        assert reload_round["embedded"] == 0 and reload_round["skipped"] == 0
        expected = tag_reference(reference, tiny_clip, vocab, tmp_path / "reference.sqlite3")
        for name in CAMERA[3:]:
            assert keywords(folder / name) == expected[name], name

        # SIGTERM in the middle of a burst: the round in flight finishes, the summary is printed, exit 0
        burst = tmp_path / "burst"
        burst.mkdir()
        names = [f"noise_{i:02d}.jpg" for i in range(40)]
        for i, name in enumerate(names):
            noise_jpeg(burst / name, i)
        sources = {name: (burst / name).read_bytes() for name in names}
        for name in names:
            shutil.copy(burst / name, folder / name)
        w.wait_for("the burst round started", lambda: any(Path(o["path"]).name in sources for o in w.files()))
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=WAIT) == 0, w.stderr()
        last = w.lines()[-1]
        assert last.get("summary") is True and last["rounds"] == len(w.rounds()) and last["forgotten"] == 2
        tagged = [n for n in names if "written" in w.outcomes(folder / n)]
        assert tagged
        for name in names:
            if name in tagged:
                assert w.outcomes(folder / name) == ["written"] and keywords(folder / name)
            else:
                assert (folder / name).read_bytes() == sources[name]  # untouched
        strays = [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix.lower() not in (".jpg", "")]
        assert not strays
    finally:
        w.close()


def test_polling_observer_and_ctrl_c(tiny_clip, samples_dir: Path, tmp_path: Path) -> None:
    """--poll (network mounts): changes found by scanning; the config file reloaded (a broken edit
    kept out); SIGINT stops as cleanly as SIGTERM."""
    folder = tmp_path / "mount"
    folder.mkdir()
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\nbeach\n")
    w = Watch(tmp_path, folder, tiny_clip, tmp_path / "cache.sqlite3", vocab, "--settle", "0.5", "--poll", "0.5")
    try:
        w.wait_for("the catch-up round", lambda: w.rounds())
        photo = folder / "a.jpg"
        shutil.copy(samples_dir / "jpg" / "Pentax_K10D.jpg", photo)
        w.wait_for("the photo tagged", lambda: w.written(photo))
        assert keywords(photo)

        # the config file (the default one, under XDG_CONFIG_HOME) appears: reloaded, every root re-scored
        config = tmp_path / "xdg" / "rtagx" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text('keyword_root = "auto"\n')
        w.wait_for("the reload round", lambda: any(r["kind"] == "reload" for r in w.rounds()))
        # a broken edit is reported; the watcher goes on with the last good settings
        config.write_text("threshold = [\n")
        w.wait_for("the broken config reported", lambda: "settings not reloaded" in w.stderr())
        second = folder / "b.jpg"
        shutil.copy(samples_dir / "jpg" / "Nikon_D70.jpg", second)
        w.wait_for("a photo tagged after the broken edit", lambda: w.written(second))
        assert sum(r["kind"] == "reload" for r in w.rounds()) == 1

        w.proc.send_signal(signal.SIGINT)
        assert w.proc.wait(timeout=WAIT) == 0, w.stderr()
        assert w.lines()[-1]["summary"] is True
    finally:
        w.close()


def test_print_service_runs_the_same_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RTAGX_CACHE": str(tmp_path / "c.sqlite3")}
    args = [sys.executable, "-m", "rtagx", "watch", "photos", "--tags", "my tags.txt", "--settle", "5"]
    unit = subprocess.run([*args, "--print-service", "systemd"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert unit.returncode == 0, unit.stderr
    exec_line = next(line for line in unit.stdout.splitlines() if line.startswith("ExecStart="))
    assert exec_line == (
        f'ExecStart={sys.executable} -m rtagx watch {tmp_path / "photos"} --tags "my tags.txt" --settle 5'
    )
    assert f"WorkingDirectory={tmp_path}" in unit.stdout
    assert f"Environment=RTAGX_CACHE={tmp_path / 'c.sqlite3'}" in unit.stdout
    agent = subprocess.run([*args, "--print-service=launchd"], cwd=tmp_path, env=env, capture_output=True)
    assert agent.returncode == 0, agent.stderr
    plist = plistlib.loads(agent.stdout)
    assert plist["ProgramArguments"][-6:] == [
        "watch",
        str(tmp_path / "photos"),
        "--tags",
        "my tags.txt",
        "--settle",
        "5",
    ]
    assert plist["EnvironmentVariables"]["RTAGX_CACHE"] == str(tmp_path / "c.sqlite3")
    assert plist["KeepAlive"] == {"SuccessfulExit": False}


def test_service_command_uses_the_installed_program(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "rtagx"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    command = service_command(str(program), ["watch", "p", "--print-service", "systemd", "-q"], [Path("p")], "py")
    assert command == [str(program), "watch", os.path.abspath("p"), "-q"]
    unit = service_file("systemd", ["/bin/rtagx", "watch", "/a b/100%"], "/", {})
    assert 'ExecStart=/bin/rtagx watch "/a b/100%%"' in unit


def test_scan_would_yield_follows_the_scanners_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    exts = frozenset({".jpg"})
    assert scan_would_yield(root / "a" / "b.JPG", root, exts)
    assert not scan_would_yield(root / "a" / "b.txt", root, exts)
    assert not scan_would_yield(root / ".hidden" / "b.jpg", root, exts)
    assert scan_would_yield(root / ".hidden" / "b.jpg", root, exts, include_hidden=True)
    assert not scan_would_yield(root / "a" / ".b.jpg.123.rtagx-tmp", root, exts)
    assert not scan_would_yield(root / "skip" / "b.jpg", root, exts, exclude=["skip"])
    assert not scan_would_yield(root / "a" / "b.jpg", root, exts, exclude=["a/*.jpg"])
    assert not scan_would_yield(tmp_path / "elsewhere.jpg", root, exts)


def test_loaded_models_keeps_the_model_between_runs(tiny_clip, tmp_path: Path) -> None:
    """What keeps the watcher's rounds fast: one resolution and one network for every run_tag call,
    until the checkpoint file changes."""
    from rtagx.model.loaded import LoadedModels

    cfg, ckpt = tiny_clip
    models = LoadedModels()
    first = models.resolve(str(cfg), str(ckpt), offline=True)
    assert models.resolve(str(cfg), str(ckpt), offline=True) is first
    text_only = models.load(first, text_only=True, device="cpu")
    full = models.load(first, device="cpu")
    assert full is not text_only and full.has_image_tower
    assert models.load(first, device="cpu") is full and models.load(first, text_only=True, device="cpu") is full
    changed = tmp_path / "changed.pt"
    shutil.copy2(ckpt, changed)
    other = models.resolve(str(cfg), str(changed), offline=True)
    assert other is not first and models.resolve(str(cfg), str(changed), offline=True) is other
    os.utime(changed, ns=(1, 1))  # the checkpoint file changed: resolved (and hashed) again
    assert models.resolve(str(cfg), str(changed), offline=True) is not other


def test_watch_from_python_until_an_event_is_set(tiny_clip, samples_dir: Path, tmp_path: Path) -> None:
    """The library without the CLI: rounds and files come through callbacks; lost events (watchdog's
    overflow warning) make it catch up; a threading.Event stops it."""
    import threading

    from rtagx.run.events import RunEvents
    from rtagx.run.watch import OVERFLOW_LOGGER, WatchOptions, watch
    from rtagx.settings import Settings

    cfg, ckpt = tiny_clip
    folder = tmp_path / "in"
    folder.mkdir()
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\nbeach\n")
    settings = Settings(
        cache=str(tmp_path / "c.sqlite3"), model=str(cfg), pretrained=str(ckpt), tags=str(vocab), threshold=-1.0
    )
    stop, kinds, outcomes = threading.Event(), [], []

    def on_round(r) -> None:
        kinds.append(r.kind)
        if r.kind == "catch-up":
            shutil.copy(samples_dir / "jpg" / "Canon_40D.jpg", folder / "new.jpg")
        elif r.kind == "new":  # what watchdog logs when the kernel dropped events: the roots are caught up
            logging.getLogger(OVERFLOW_LOGGER).warning("Inotify queue overflowed; filesystem events were lost")
        else:
            stop.set()

    result = watch(
        [folder],
        settings,
        options=WatchOptions(settle=0.3),
        events=RunEvents(on_file=outcomes.append),
        on_round=on_round,
        stop=stop,
    )
    assert kinds == ["catch-up", "new", "overflow"] and result.rounds == 3
    assert [(o.path.name, o.action) for o in outcomes] == [("new.jpg", "written"), ("new.jpg", "unchanged")]
    assert keywords(folder / "new.jpg")


def test_an_out_of_range_config_edit_keeps_the_last_good_settings(tiny_clip, samples_dir: Path, tmp_path: Path) -> None:
    """A config edit that parses but is out of range (`margin = 5`) is refused like a broken one:
    photos landing after it are still tagged (it used to be adopted, and every later round failed).
    The final summary counts the decodes of every round; SIGHUP stops it cleanly, as SIGTERM does."""
    folder = tmp_path / "photos"
    folder.mkdir()
    vocab = tmp_path / "tags.txt"
    vocab.write_text("dog\ncat\nbeach\n")
    w = Watch(tmp_path, folder, tiny_clip, tmp_path / "cache.sqlite3", vocab, "--settle", "0.5")
    try:
        w.wait_for("the catch-up round", lambda: w.rounds())
        first = folder / "a.jpg"
        shutil.copy(samples_dir / "jpg" / "Pentax_K10D.jpg", first)
        w.wait_for("the photo tagged", lambda: w.written(first))

        config = tmp_path / "xdg" / "rtagx" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text("margin = 5\n")
        w.wait_for("the bad value reported", lambda: "settings not reloaded" in w.stderr())
        assert "'margin' in config file" in w.stderr() and "round failed" not in w.stderr()
        second = folder / "b.jpg"
        shutil.copy(samples_dir / "jpg" / "Nikon_D70.jpg", second)
        w.wait_for("a photo tagged after the bad edit", lambda: w.written(second))
        assert not any(r["kind"] == "reload" for r in w.rounds())

        w.proc.send_signal(signal.SIGHUP)  # a closed terminal stops it like SIGTERM
        assert w.proc.wait(timeout=WAIT) == 0, w.stderr()
        summary = w.lines()[-1]
        assert summary["summary"] is True
        assert summary["decoded"] == sum(r["decoded"] for r in w.rounds()) == 2
    finally:
        w.close()
