"""The ``rtagx`` entry point: `cli` with every command registered, and `main`.

The commands live in modules by what they do (tagging, analysis, library, admin); importing them here
registers them on the root group defined in rtagx.cli.app. Exit codes are listed there.
"""

from __future__ import annotations

import os
import sys

import click

from rtagx.cli import admin, analysis, library, tagging
from rtagx.cli.app import EXIT_INTERRUPTED, cli

__all__ = ["admin", "analysis", "cli", "library", "main", "tagging"]


def main() -> None:
    code: int | str | None = 0
    try:
        cli(prog_name="rtagx")
    except KeyboardInterrupt:  # pragma: no cover - between commands
        click.echo("rtagx: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except SystemExit as e:
        code = e.code
    # a decoder thread that never returns must not keep the process alive; only runs that decode
    # images load rtagx.run.local (importing it just to look costs every other command 0.3 s)
    local = sys.modules.get("rtagx.run.local")
    if local is not None and local.STUCK_DECODERS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)
