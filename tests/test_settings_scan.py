"""Settings layering and the file scanner, on real files and folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rtagx.errors import UsageError
from rtagx.run.scan import ScannedFile, ScanProblem, scan
from rtagx.settings import load_settings

EXTS = frozenset({".jpg", ".png"})


def test_layering_defaults_config_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('threshold = 0.2\nbatch-size = 8\ntags = "coco"\nexclude = ["*.tmp"]\n')
    env = {"RTAGX_THRESHOLD": "0.25", "RTAGX_NO_WAIT": "yes"}
    s = load_settings({"tags": "photos"}, config_path=cfg, environ=env)
    assert s.threshold == 0.25 and s.sources["threshold"] == "env RTAGX_THRESHOLD"
    assert s.batch_size == 8 and s.sources["batch_size"].startswith("config")
    assert s.tags == "photos" and s.sources["tags"] == "option"
    assert s.no_wait is True and s.exclude == ("*.tmp",)
    assert s.model == "ViT-B-16" and s.sources["model"] == "default"


def test_bad_config_values_name_their_origin(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("batch-size = 'many'\n")
    with pytest.raises(UsageError, match="batch-size"):
        load_settings(config_path=cfg, environ={})
    cfg.write_text("no-such-option = 1\n")
    with pytest.raises(UsageError, match="unknown setting"):
        load_settings(config_path=cfg, environ={})
    cfg.write_text("this is [not toml\n")
    with pytest.raises(UsageError, match="cannot be read"):
        load_settings(config_path=cfg, environ={})
    with pytest.raises(UsageError, match="RTAGX_TOP_K"):
        load_settings(environ={"RTAGX_TOP_K": "ten"})


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_scan_walks_sorted_skips_hidden_and_other_extensions(tmp_path: Path) -> None:
    _touch(tmp_path / "b.JPG")
    _touch(tmp_path / "a.png")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.jpg")
    _touch(tmp_path / ".thumbs" / "c.jpg")
    _touch(tmp_path / "sub" / "d.jpg")
    result = scan([tmp_path], EXTS)
    assert [f.path.name for f in result.files] == ["a.png", "b.JPG", "d.jpg"]
    with_hidden = scan([tmp_path], EXTS, include_hidden=True)
    assert {f.path.name for f in with_hidden.files} == {"a.png", "b.JPG", "d.jpg", ".hidden.jpg", "c.jpg"}


def test_scan_excludes_and_dedupes_overlapping_roots(tmp_path: Path) -> None:
    _touch(tmp_path / "keep" / "a.jpg")
    _touch(tmp_path / "skip" / "b.jpg")
    result = scan([tmp_path, tmp_path / "keep"], EXTS, exclude=["skip"])
    assert [f.path.name for f in result.files] == ["a.jpg"]


def test_scan_symlinks_loops_and_broken_links(tmp_path: Path) -> None:
    _touch(tmp_path / "lib" / "a.jpg")
    os.symlink(tmp_path / "lib", tmp_path / "lib" / "loop")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "lib" / "dangling.jpg")
    result = scan([tmp_path / "lib"], EXTS)
    assert [f.path.name for f in result.files] == ["a.jpg"]
    assert [(p.path.name, p.reason) for p in result.problems] == [("dangling.jpg", "broken-symlink")]
    followed = scan([tmp_path / "lib"], EXTS, follow_symlinks=True)  # the loop ends, no hang
    assert [f.path.name for f in followed.files] == ["a.jpg"]


def test_scan_odd_file_names(tmp_path: Path) -> None:
    names = ["new\nline.jpg", os.fsdecode(b"bad-\xff\xfe.jpg"), "x" * 200 + ".jpg", "日本.jpg"]
    for n in names:
        _touch(tmp_path / n)
    result = scan([tmp_path], EXTS)
    assert sorted(f.path.name for f in result.files) == sorted(names)
    assert all(isinstance(f, ScannedFile) and f.size == 1 for f in result.files)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
def test_scan_unreadable_folder_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    _touch(tmp_path / "locked" / "a.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        result = scan([tmp_path], EXTS)
        assert any(isinstance(p, ScanProblem) and p.reason == "permission-denied" for p in result.problems)
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_a_fifo_or_device_named_on_the_command_line_is_not_an_image(tmp_path: Path) -> None:
    """`rtagx tag pipe.jpg` (a FIFO) or a link to /dev/zero: one skip saying what it is, not
    "permission-denied: cannot list folder" (it was taken for a folder)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    result = scan([fifo, tmp_path / "zero.jpg"], frozenset({".jpg"}))
    assert result.files == []
    assert [(p.path.name, p.reason) for p in result.problems] == [
        ("pipe.jpg", "not-an-image"),
        ("zero.jpg", "not-an-image"),
    ]
    assert all("not a regular file" in p.detail for p in result.problems)


def test_config_file_with_a_byte_order_mark_and_crlf_is_read(tmp_path: Path) -> None:
    """Windows Notepad saves UTF-8 with a BOM and CRLF line ends: `rtagx config show` reads it (TOML
    forbids the BOM; it used to stop every command with "Invalid statement (at line 1, column 1)")."""
    import json

    from click.testing import CliRunner

    from rtagx.cli.commands import cli

    cfg = tmp_path / "config.toml"
    cfg.write_bytes('\ufeffthreshold = 0.3\r\ntop-k = 4\r\nkeyword-root = "été"\r\n'.encode())
    result = CliRunner().invoke(cli, ["--config", str(cfg), "config", "show", "--json"], env={"RTAGX_THRESHOLD": None})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["threshold"]["value"] == 0.3 and shown["top_k"]["value"] == 4
    assert shown["keyword_root"]["value"] == "été"


def test_a_folder_where_the_default_config_file_belongs_is_an_error(tmp_path: Path) -> None:
    """`mkdir ~/.config/rtagx/config.toml` by mistake: every command says so (exit 2, one line)
    instead of silently running on defaults."""
    from click.testing import CliRunner

    from rtagx.cli.commands import cli

    (tmp_path / "rtagx" / "config.toml").mkdir(parents=True)
    result = CliRunner().invoke(cli, ["config", "show"], env={"XDG_CONFIG_HOME": str(tmp_path), "RTAGX_CONFIG": None})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"rtagx: error: config file {tmp_path / 'rtagx' / 'config.toml'} cannot be read: "
        f"[Errno 21] Is a directory: '{tmp_path / 'rtagx' / 'config.toml'}'"
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("tags = 5", "expected text"),
        ("exclude = [1, 2]", "expected a list of text"),
        ("exclude = 5", "expected a list of text"),
    ],
)
def test_a_config_value_of_the_wrong_toml_type_names_key_and_file(tmp_path: Path, line: str, expected: str) -> None:
    """`tags = 5` used to run with the vocabulary "5"; `exclude = 5` with the glob "5"."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(line + "\n")
    key = line.split()[0]
    with pytest.raises(UsageError, match=rf"^'{key}' in config file {cfg}: bad value .*\({expected}"):
        load_settings(config_path=cfg, environ={})


def test_config_show_refuses_an_out_of_range_value_after_showing_it(tmp_path: Path) -> None:
    """`rtagx config show` printed `threshold = 5 # env RTAGX_THRESHOLD` and exit 0, though every run
    refuses it with exit 2: now the table, then the run's one-line error and exit 2."""
    from click.testing import CliRunner

    from rtagx.cli.commands import cli

    env = {"RTAGX_THRESHOLD": "5", "RTAGX_CONFIG": None, "XDG_CONFIG_HOME": str(tmp_path)}
    result = CliRunner().invoke(cli, ["config", "show"], env=env)
    assert result.exit_code == 2
    assert "threshold        = 5 " in result.output
    assert result.output.strip().splitlines()[-1] == (
        "rtagx: error: RTAGX_THRESHOLD: bad value 5.0 (expected a cosine or probability within [-1, 1])"
    )
