"""The ``rtagx`` entry point: `cli` with every command registered, and `main`.

The commands live in modules by what they do (tagging, analysis, library, admin); importing them here
registers them on the root group defined in rtagx.cli.app. Exit codes are listed there.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

from rtagx.cli import admin, analysis, library, tagging
from rtagx.cli.app import EXIT_INTERRUPTED, EXIT_TERMINATED, cli

__all__ = ["admin", "analysis", "cli", "library", "main", "tagging"]


_terminated: list[int] = []


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM stops a run as Ctrl-C does: finished batches kept, no file half-written, a summary."""
    _terminated.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    code: int | str | None = 0
    signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    try:
        cli(prog_name="rtagx")
    except KeyboardInterrupt:  # pragma: no cover - between commands
        click.echo("rtagx: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except SystemExit as e:
        code = e.code
    if _terminated and code == EXIT_INTERRUPTED:
        code = EXIT_TERMINATED
    # a decoder thread that never returns must not keep the process alive; only runs that decode
    # images load rtagx.run.local (importing it just to look costs every other command 0.3 s)
    local = sys.modules.get("rtagx.run.local")
    if local is not None and local.STUCK_DECODERS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)
