"""The command line as people and scripts meet it: terminals, pipes, messages, exit codes, README."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rtagx.cli import reference
from rtagx.cli.commands import cli

REPO = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RTAGX_CACHE=str(tmp_path / "cache.sqlite3"),
        RTAGX_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        COLUMNS="100",
    )
    env.pop("RTAGX_NO_PROGRESS", None)
    return env


def _args(tiny_clip, folder: Path) -> list[str]:
    cfg, ckpt = tiny_clip
    return [
        "tag",
        str(folder),
        "--model",
        str(cfg),
        "--pretrained",
        str(ckpt),
        "--tags",
        "coco",
        "--threshold",
        "-1",
        "--top-k",
        "2",
    ]


def test_readme_command_reference_matches_help() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert reference.current_block(readme) == reference.command_reference().strip(), (
        "README's command reference is stale: run `python -m rtagx.cli.reference --write README.md`"
    )


def test_every_command_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for command in (
        "tag",
        "retag",
        "untag",
        "show",
        "explain",
        "eval",
        "calibrate",
        "doctor",
        "config show",
        "cache stats",
        "cache prune",
        "cache path",
    ):
        assert f"#### `rtagx {command}`" in readme


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_terminal_run_shows_progress_and_asks_before_the_first_write(tiny_clip, photo_dir, tmp_path) -> None:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtagx", *_args(tiny_clip, photo_dir)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(tmp_path),
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"Go on?" in seen:
                os.write(master, b"y\n")
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    text = seen.decode("utf-8", "replace")
    assert answered, text
    assert "write keywords into the original files" in text
    assert ("embedding" in text and "file/s" in text) or "file]" in text, text  # a tqdm bar was drawn
    assert proc.returncode == 3, text  # corrupted.jpg is skipped
    assert "files: embedded 4" in text


def test_pipe_run_shows_no_progress_and_asks_nothing(tiny_clip, photo_dir, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rtagx", *_args(tiny_clip, photo_dir)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Go on?" not in proc.stdout + proc.stderr
    assert "embedding" not in proc.stderr and "\r" not in proc.stderr
    assert "files: embedded 4" in proc.stdout


def test_declining_the_question_writes_nothing(tiny_clip, photo_dir, tmp_path, monkeypatch) -> None:
    from rtagx.cli import app as cli_app  # where the confirmation looks it up

    monkeypatch.setattr(cli_app, "_on_terminal", lambda: True)
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    result = CliRunner().invoke(cli, _args(tiny_clip, photo_dir), input="n\n", env=env)
    # a person's "no" is an answer, not a fatal error (exit 1 is for those): exit 0, said in one line
    assert result.exit_code == 0 and "nothing was written" in result.output and "Aborted" not in result.output
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before
    # --yes skips the question; --dry-run never asks
    result = CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--dry-run"], env=env)
    assert "Go on?" not in result.output and result.exit_code == 3


def test_retag_yes_does_what_tag_yes_does(tiny_clip, photo_dir, tmp_path, monkeypatch) -> None:
    """A folder tagged into sidecars that retag would now write into: the same question as tag's,
    and --yes skips it."""
    from rtagx.cli import app as cli_app  # where the confirmation looks it up

    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--write", "sidecar"], env=env)
    monkeypatch.setattr(cli_app, "_on_terminal", lambda: True)
    before = {p.name: p.read_bytes() for p in photo_dir.iterdir()}
    declined = CliRunner().invoke(cli, ["retag", "--write", "embed"], input="n\n", env=env)
    assert declined.exit_code == 0 and "Go on?" in declined.output and "nothing was written" in declined.output
    assert {p.name: p.read_bytes() for p in photo_dir.iterdir()} == before
    same_target = CliRunner().invoke(cli, ["retag", "--top-k", "1"], input="", env=env)
    assert "Go on?" not in same_target.output, same_target.output  # still sidecars: nothing to ask
    result = CliRunner().invoke(cli, ["retag", "--write", "embed", "--yes"], env=env)
    assert result.exit_code == 0 and "Go on?" not in result.output, result.output
    assert (photo_dir / "Canon_40D.jpg").read_bytes() != before["Canon_40D.jpg"]


def test_verbose_and_quiet(tiny_clip, photo_dir, tmp_path) -> None:
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    loud = CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--yes", "-v"], env=env)
    assert sum(x.startswith("written ") for x in loud.output.splitlines()) == 4 and "skipped     " in loud.output
    quiet = CliRunner().invoke(cli, ["-q", *_args(tiny_clip, photo_dir), "--yes"], env=env)
    lines = [x for x in quiet.output.splitlines() if x.strip()]
    # -q: one line per skipped file with its reason (the cron log lists them), then the summary
    assert len(lines) == 3 and lines[0].startswith("skipped ") and "corrupted.jpg: corrupt" in lines[0]
    assert lines[1].startswith("5 files:"), quiet.output


def test_quiet_never_lists_every_file(tiny_clip, photo_dir, tmp_path) -> None:
    """`-q` is errors, skipped files and the summary, in every command that lists files."""
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    runs = {
        "tag --dry-run": ["-q", *_args(tiny_clip, photo_dir), "--dry-run"],
        "tag": [*_args(tiny_clip, photo_dir), "--yes", "-q"],
        "retag --dry-run": ["retag", str(photo_dir), "--dry-run", "--top-k", "1", "-q"],
        "untag --dry-run": ["untag", str(photo_dir), "--dry-run", "-q"],
        "untag": ["-q", "untag", str(photo_dir)],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(cli, args, env=env)
        skips = 1 if name.startswith("tag") else 0  # only tag decodes (and skips) the corrupt file
        assert result.exit_code == (3 if skips else 0), (name, result.output)
        lines = [x for x in result.output.splitlines() if x.strip()]
        listed = [x for x in lines if not x.startswith(("skipped ", "time "))]
        assert len(listed) == 1 and "files:" in listed[0], (name, result.output)
        assert sum("corrupted.jpg: corrupt" in x for x in lines) == skips, (name, result.output)


def test_untag_speaks_of_removal_not_of_scores(tiny_clip, photo_dir, tmp_path) -> None:
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--yes"], env=env)
    result = CliRunner().invoke(cli, ["untag", str(photo_dir), "-v"], env=env)
    assert result.exit_code == 0, result.output
    written = [x for x in result.output.splitlines() if x.startswith("written ")]
    assert len(written) == 4 and all(": removed " in x for x in written), result.output
    assert "threshold" not in result.output
    assert "5 files: removed rtagx's keywords from 4, unchanged 1, skipped 0" in result.output
    assert "embedded" not in result.output and "tagged" not in result.output


def test_csv_output(tiny_clip, photo_dir, tmp_path) -> None:
    import csv
    import io

    result = CliRunner().invoke(
        cli, [*_args(tiny_clip, photo_dir), "--yes", "--csv"], env={"RTAGX_CACHE": str(tmp_path / "c.db")}
    )
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == ["path", "tag", "score", "action"]
    tagged = [r for r in rows[1:] if r[1]]
    assert len(tagged) == 8 and all(r[3] == "written" for r in tagged)
    assert any(r[3] == "skipped:corrupt" for r in rows[1:])


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["tag", "/no/such/folder"], 2, "path not found: /no/such/folder"),
        (["tag", ".", "--threshold", "1.5"], 2, "--threshold"),
        (["tag", ".", "--thresold", "0.3"], 2, "--thresold"),
        (["retag", "--mode", "replace"], 2, "--mode"),
        (["tag", ".", "--ext", ".jpgg"], 2, "--ext: rtagx cannot read .jpgg"),
        (["tag", ".", "--tags", "/no/such/vocab.txt"], 1, "/no/such/vocab.txt"),
        (["tag", ".", "--tags", "nosuchvocab"], 1, "nosuchvocab: no such vocabulary"),
        (["tag", ".", "--model", "NoSuchModel-XYZ"], 1, "NoSuchModel-XYZ"),
        (["tag", ".", "--pretrained", "/no/such/ckpt.pt", "--model", "ViT-B-16"], 1, "/no/such/ckpt.pt"),
        (["tag", ".", "--workers", "-1"], 2, "--workers"),
        (["retag"], 2, "no tagged folders yet"),
        (["show"], 2, "Missing argument 'PATHS...'"),
    ],
)
def test_one_line_errors(args, code, words, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args, env={"RTAGX_CACHE": str(tmp_path / "c.db")})
    assert result.exit_code == code, result.output
    assert words in result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("rtagx: error: "), result.output  # one line, as promised
    assert ":0:" not in result.output  # no made-up line numbers


def test_readme_exit_code_table_is_the_codes_the_cli_uses() -> None:
    from rtagx import errors
    from rtagx.cli import app

    table = re.findall(r"^\| (\d+) \|", _readme_section("Exit codes"), flags=re.M)
    raised = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.RtagxError)}
    decided = {app.EXIT_OK, app.EXIT_SKIPPED, app.EXIT_INTERRUPTED, app.EXIT_TERMINATED}
    assert sorted(int(x) for x in table) == sorted(raised | decided)


def test_debug_shows_the_traceback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["--debug", "tag", ".", "--tags", "/no/such/vocab.txt"], env={"RTAGX_CACHE": str(tmp_path / "c.db")}
    )
    assert "Traceback" in result.output


def test_config_file_env_and_flags_layer_and_config_show_says_where(tmp_path) -> None:
    config = tmp_path / "rtagx.toml"
    config.write_text('threshold = 0.31\ntop-k = 4\nwrite = "sidecar"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "config", "show", "--json"], env={"RTAGX_TOP_K": "6"})
    data = json.loads(result.output)
    assert data["threshold"] == {"value": 0.31, "from": f"config {config}"}
    assert data["top_k"] == {"value": 6, "from": "env RTAGX_TOP_K"}
    assert data["model"]["from"] == "default"
    bad = tmp_path / "bad.toml"
    bad.write_text("treshold = 0.3\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(bad), "config", "show"])
    assert result.exit_code == 2 and "unknown setting 'treshold'" in result.output


def test_declined_nothing_and_empty_folder_exit_codes(tiny_clip, tmp_path) -> None:
    """An empty folder is not an error (exit 0), but the run says that no image was found and which
    extensions it looked for."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no photos here", encoding="utf-8")
    result = CliRunner().invoke(cli, _args(tiny_clip, empty), env={"RTAGX_CACHE": str(tmp_path / "c.db")})
    assert result.exit_code == 0, result.output
    assert f"no image found under {empty}" in result.output and ".jpg" in result.output and ".cr2" in result.output
    narrow = CliRunner().invoke(
        cli, [*_args(tiny_clip, empty), "--ext", "png,.webp"], env={"RTAGX_CACHE": str(tmp_path / "c.db")}
    )
    assert narrow.exit_code == 0 and "(looked for .png .webp)" in narrow.output, narrow.output


@pytest.mark.parametrize(
    "env, config, words",
    [
        ({"RTAGX_THRESHOLD": "5"}, "", ["RTAGX_THRESHOLD", "5", "within [-1, 1]"]),
        ({"RTAGX_TOP_K": "many"}, "", ["RTAGX_TOP_K", "'many'", "a whole number"]),
        ({"RTAGX_WRITE": "xmp"}, "", ["RTAGX_WRITE", "'xmp'", "auto, embed, sidecar, txt, none"]),
        ({}, 'threshold = "high"\n', ["'threshold' in config file", "'high'", "a number"]),
        ({}, "max-megapixels = -1\n", ["'max-megapixels' in config file", "a number >= 0"]),
        ({}, "treshold = 0.3\n", ["unknown setting 'treshold'", "config file"]),
    ],
)
def test_setting_errors_name_the_variable_or_the_key_and_file(env, config, words, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["tag", "."]
    if config:
        (tmp_path / "c.toml").write_text(config, encoding="utf-8")
        args = ["--config", str(tmp_path / "c.toml"), *args]
    result = CliRunner().invoke(cli, args, env={"RTAGX_CACHE": str(tmp_path / "c.db"), **env})
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output, result.output
    if config:
        assert str(tmp_path / "c.toml") in result.output
    assert "--threshold" not in result.output and "--top-k" not in result.output  # options nobody passed
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["config", "show"],
        ["tag", "."],
        ["retag"],
        ["untag", "."],
        ["show", "x.jpg"],
        ["explain", "x.jpg"],
        ["eval", "."],
        ["calibrate", ".", "-o", "out.txt"],
        ["cache", "stats"],
        ["cache", "path"],
        ["cache", "prune"],
        ["doctor"],
    ],
)
def test_unknown_config_key_is_the_same_usage_error_everywhere(command, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 1\n", encoding="utf-8")
    for how in ("option", "env"):
        args = ["--config", str(bad), *command] if how == "option" else command
        env = {"RTAGX_CACHE": str(tmp_path / "c.db"), **({"RTAGX_CONFIG": str(bad)} if how == "env" else {})}
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, (command, how, result.output)
        assert f"config file {bad}: unknown setting 'colour'" in result.output


def _readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_config_key_the_readme_shows_is_accepted(tmp_path) -> None:
    """The README's config section is true to the code: every line of its example file and of its
    table of keys is accepted as written and shows up under that key in `config show`; the table
    lists every setting."""
    from rtagx.settings import OPTION_NAMES, config_key, env_name, load_settings

    section = _readme_section("Configuration")
    example = re.findall(r"^    ([a-z][a-z0-9-]*) = (.+)$", section, flags=re.M)
    table = re.findall(r"^\| `([a-z][a-z0-9-]*) = (.+?)` \|", section, flags=re.M)
    assert example and {k for k, _ in table} == {config_key(n) for n in OPTION_NAMES}
    variables = re.findall(r"^\| `([a-z][a-z0-9-]*) = .+?` \|.*\| `(RTAGX_[A-Z0-9_]+)`", section, flags=re.M)
    assert {key: env_name(n) for n in OPTION_NAMES for key in [config_key(n)]} == dict(variables)
    for key, value in [*example, *table]:
        config = tmp_path / f"{key}.toml"
        config.write_text(f"{key} = {value}\n", encoding="utf-8")
        load_settings(config_path=config, environ={})  # raises on an unknown key or a bad value
        shown = CliRunner().invoke(cli, ["--config", str(config), "config", "show"], env={"RTAGX_OFFLINE": None})
        assert shown.exit_code == 0, (key, shown.output)
        assert re.search(rf"^{key} +=.*# config ", shown.output, flags=re.M), (key, shown.output)


def test_every_long_option_that_is_a_setting_is_a_config_key(tmp_path) -> None:
    """The README says config keys are the long option names: --ext is `ext`, --hidden is `hidden`."""
    import click

    from rtagx.settings import OPTION_NAMES, config_key

    keys = {config_key(name) for name in OPTION_NAMES}
    for command in (cli.commands["tag"], cli.commands["retag"], cli.commands["untag"]):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name not in OPTION_NAMES:
                continue
            long_name = next(o for o in param.opts if o.startswith("--"))[2:]
            assert long_name in keys, long_name


def test_config_show_prints_the_defaults_that_are_used() -> None:
    result = CliRunner().invoke(cli, ["config", "show"], env={"RTAGX_CONFIG": "", "XDG_CONFIG_HOME": "/nonexistent"})
    assert result.exit_code == 0, result.output
    assert re.search(r"^max-megapixels += 200 ", result.output, flags=re.M), result.output
    assert re.search(r"^decode-timeout += 120 ", result.output, flags=re.M), result.output


def test_doctor_reports_each_check(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["doctor"], env={"RTAGX_CACHE": str(tmp_path / "c.db")})
    lines = [x for x in result.output.splitlines() if x[:4] in ("OK  ", "WARN", "FAIL")]
    names = " ".join(x.split()[1] for x in lines)
    for name in ("python", "torch", "device", "model", "pyexiv2", "cache", "exiftool", "extra"):
        assert name in names, result.output
    model_line = next(x for x in lines if x.split()[1] == "model")
    assert "open_clip" in model_line and "weights" in model_line
    # the default weights are not on this machine: FAIL with a fix, exit 1
    assert result.exit_code == 1 and "fix:" in result.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("rtagx, version ")


def test_show_reports_owned_keywords_and_cached_scores(tiny_clip, photo_dir, tmp_path) -> None:
    import subprocess as sp

    if shutil.which("exiftool") is None:
        pytest.skip("exiftool")
    image = photo_dir / "Canon_40D.jpg"
    sp.run(
        ["exiftool", "-q", "-overwrite_original", "-Keywords=holiday", "-XMP-dc:Subject=holiday", str(image)],
        check=True,
    )
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--yes"], env=env)
    result = CliRunner().invoke(cli, ["show", str(image), "--json"], env=env)
    info = json.loads(result.output)
    assert "holiday" in info["keywords"] and "holiday" not in info["owned"]
    assert len(info["owned"]) == 2 and set(info["owned"]) <= set(info["keywords"])
    assert info["cached"] is True and len(info["scores"]) == 10
    assert [s[0] for s in info["scores"][:2]] == info["owned"]


def test_retag_says_which_model_it_uses_and_cache_stats_tells_models_apart(
    tiny_clip, tiny_clip_other, photo_dir, tmp_path
) -> None:
    env = {"RTAGX_CACHE": str(tmp_path / "c.db")}
    CliRunner().invoke(cli, [*_args(tiny_clip, photo_dir), "--write", "none"], env=env)
    other_cfg, other_ckpt = tiny_clip_other
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{other_cfg}"\npretrained = "{other_ckpt}"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "retag", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    said = [x for x in result.output.splitlines() if "the model it was last tagged with" in x]
    assert len(said) == 1 and f"'model' in config file {config}" in said[0], result.output
    assert f"`rtagx tag {photo_dir}` embeds it with that model" in said[0]
    quiet = CliRunner().invoke(cli, ["retag", "--dry-run"], env=env)
    assert "last tagged with" not in quiet.output  # the same model: nothing to say
    # two models of one config name: cache stats shows what tells them apart
    CliRunner().invoke(cli, [*_args(tiny_clip_other, photo_dir), "--write", "none"], env=env)
    stats = CliRunner().invoke(cli, ["cache", "stats"], env=env)
    models = [x for x in stats.output.splitlines() if x.startswith("model ")]
    assert len(models) == 2 and models[0].split(":")[0] != models[1].split(":")[0], stats.output


@pytest.mark.parametrize("kind", ["folder", "not-sqlite", "newer"])
def test_doctor_fails_on_a_cache_every_run_would_refuse(tmp_path, kind: str) -> None:
    """A folder, a file that is no SQLite database or a cache from a newer rtagx at the cache path:
    `tag` stops with "cannot open cache", so doctor says FAIL (exit 1), not OK."""
    import sqlite3

    cache = tmp_path / "c.sqlite3"
    if kind == "folder":
        cache.mkdir()
    elif kind == "not-sqlite":
        cache.write_text("not a database\n")
    else:
        with sqlite3.connect(cache) as conn:
            conn.execute("PRAGMA user_version = 999")
        conn.close()
    result = CliRunner().invoke(cli, ["doctor"], env={"RTAGX_CACHE": str(cache)})
    line = next(x for x in result.output.splitlines() if x.split()[1:2] == ["cache"])
    assert line.startswith("FAIL"), result.output
    assert result.exit_code == 1
    if kind == "newer":
        return  # read-only commands may still read a newer cache
    # and a read-only command on that cache says the same in one line (it was an "internal error")
    stats = CliRunner().invoke(cli, ["cache", "stats"], env={"RTAGX_CACHE": str(cache)})
    assert stats.exit_code == 1 and stats.output.startswith("rtagx: error: "), stats.output
    assert "internal error" not in stats.output and len(stats.output.strip().splitlines()) == 1


def test_doctor_fails_on_a_bad_setting_and_passes_a_good_cache(tmp_path) -> None:
    """RTAGX_WRITE=bogus stops every run with exit 2: doctor names it; an existing cache stays OK."""
    cache = tmp_path / "c.sqlite3"
    from rtagx.cache.store import open_store

    open_store(cache).close()
    result = CliRunner().invoke(cli, ["doctor"], env={"RTAGX_CACHE": str(cache), "RTAGX_WRITE": "bogus"})
    lines = result.output.splitlines()
    assert next(x for x in lines if x.split()[1:2] == ["settings"]).startswith("FAIL  settings     RTAGX_WRITE: bad")
    assert next(x for x in lines if x.split()[1:2] == ["cache"]).startswith("OK"), result.output
    assert result.exit_code == 1
