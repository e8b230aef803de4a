"""What every command shares: the context object, exit codes and one-line errors, logging, the root
`cli` group the command modules register on, the Renderer of run events, and the question asked
before the first write into a folder's originals.

Exit codes: 0 all good (a declined first-write question and a folder without images too); 1 fatal
error; 2 usage error (an option, argument, variable or config key); 3 finished but some files were
skipped or failed; 4 the cache is locked by another rtagx and --no-wait was given; 5 --engine ray cannot
run (Ray not installed, cluster unreachable or failed); 130 interrupted (Ctrl-C); 143 stopped by SIGTERM
(the same clean stop as Ctrl-C: every finished batch kept, a summary printed).
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from rtagx import __version__
from rtagx.errors import RtagxError, UsageError

#: The codes the CLI itself decides; errors carry theirs (RtagxError 1, UsageError 2, LockBusyError 4).
EXIT_OK, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 3, 130
#: A run stopped by SIGTERM (``timeout`` in a cron job, a service manager): 128 + 15.
EXIT_TERMINATED = 143
EXIT_FATAL, EXIT_USAGE = RtagxError.exit_code, UsageError.exit_code
log = logging.getLogger("rtagx")


class Context:
    def __init__(self, config: Path | None, debug: bool, quiet: bool, verbose: int) -> None:
        self.config = config
        self.debug = debug
        self.quiet = quiet
        self.verbose = verbose


def _fail(ctx: Context | None, error: BaseException) -> None:
    """Print a one-line error (or the traceback with --debug) and exit with the documented code."""
    if ctx is not None and ctx.debug:
        traceback.print_exc()
    if isinstance(error, RtagxError):
        click.echo(f"rtagx: error: {error}", err=True)
        sys.exit(error.exit_code)
    first = str(error).splitlines()[0] if str(error) else ""
    click.echo(f"rtagx: internal error: {type(error).__name__}: {first} (run with --debug for the traceback)", err=True)
    sys.exit(EXIT_FATAL)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("rtagx: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # output piped into `head` and closed early
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_OK)
        except Exception as e:
            _fail(ctx, e)

    return wrapper


def set_logging(verbose: int) -> None:
    """-v: rtagx's own info messages; -vv: debug messages from rtagx and the libraries (open_clip
    logs on the root logger)."""
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


class OneLineErrorsGroup(click.Group):
    """click prints usage errors as three lines (``Usage: ... Try ... Error: ...``); rtagx promises
    one line, ``rtagx: error: ...`` naming the option or argument, with exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `rtagx` or `rtagx cache`: the help
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"rtagx: error: {e.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            click.echo(f"rtagx: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C or end of input at a question
            click.echo("rtagx: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="rtagx")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (TOML). [default: the platform's config folder, rtagx/config.toml]",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Only errors, skipped files with their reason, and the summary; no progress bars.",
)
@click.option(
    "--verbose", "-v", count=True, help="More detail: -v lists every file and its reason, -vv logs debug messages."
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None, debug: bool, quiet: bool, verbose: int) -> None:
    """rtagx: tag photo libraries with CLIP and write the tags as keywords photo software reads.

    \b
    rtagx tag ~/Photos                      embed what is new, tag, write keywords
    rtagx retag --threshold 0.3             re-score from the cache; no image is decoded again
    """
    logging.basicConfig(level=logging.WARNING, format="rtagx: %(message)s")
    set_logging(verbose)
    # Library warnings (Pillow's "Corrupt EXIF data", ...) are log messages, shown with -vv only:
    # the file's own skip reason already says what matters.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)
    for noisy in ("huggingface_hub", "urllib3", "httpx", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    ctx.obj = Context(config, debug, quiet, verbose)


# -- rendering ------------------------------------------------------------------------------------


class Renderer:
    """Builds the RunEvents for a command: progress bars on a terminal, text or JSON lines."""

    def __init__(
        self,
        ctx: Context,
        *,
        as_json: bool,
        as_csv: bool,
        list_files: bool,
        progress: bool = True,
        removal: bool = False,
    ) -> None:
        from rtagx.cli.render import CSV_HEADER
        from rtagx.run.events import RunEvents

        self.ctx = ctx
        self.as_json = as_json
        self.as_csv = as_csv
        # -q: errors, skipped files and the summary, even where the command lists files (--dry-run)
        self.list_files = (list_files and not ctx.quiet) or ctx.verbose >= 1
        self.removal = removal
        self.bars: dict[str, Any] = {}
        self.progress_enabled = progress and not ctx.quiet and sys.stderr.isatty()
        self.csv_writer = csv.writer(sys.stdout) if as_csv else None
        if self.csv_writer:
            self.csv_writer.writerow(CSV_HEADER)
        self.events = RunEvents(
            on_file=self.file,
            on_stage=self.stage,
            on_progress=self.progress,
            on_wait_lock=self.wait_lock,
            on_message=self.message,
        )

    def stage(self, name: str, total: int) -> None:
        if not self.progress_enabled:
            return
        from tqdm import tqdm

        labels = {
            "scan": "scanning",
            "prompts": "encoding prompts",
            "embed": "embedding",
            "write": "tagging",
            "export": "exporting",
        }
        if name.startswith("embed:"):  # several models: one bar per model, all shown while they embed
            label = f"embedding ({name[6:]})"
            self.close(keep="embed:")
        else:
            label = labels.get(name, name)
            self.close()  # one bar at a time: the stage that started last
        try:  # a terminal that reports no size (a bare pty, some CI consoles) would hide the bars
            size = os.get_terminal_size(sys.stderr.fileno())
            sized = size.columns > 0 and size.lines > 0
        except OSError:
            sized = False
        self.bars[name] = tqdm(
            total=total or None,
            desc=label,
            unit="file" if name != "prompts" else "prompt",
            position=len(self.bars),
            file=sys.stderr,
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,
            leave=False,
        )

    def progress(self, name: str, n: int) -> None:
        bar = self.bars.get(name)
        if bar is not None:
            bar.update(n)

    def close(self, keep: str = "") -> None:
        """Close the bars, but those of stages named ``keep...`` when ``keep`` is given."""
        for name in [n for n in self.bars if not keep or not n.startswith(keep)]:
            self.bars.pop(name).close()

    def wait_lock(self) -> None:
        if not self.ctx.quiet:
            click.echo(
                "rtagx: another rtagx is using the cache; waiting for it (Ctrl-C to stop, --no-wait to exit)", err=True
            )

    def message(self, text: str) -> None:
        if not self.ctx.quiet:
            click.echo(f"rtagx: {text}", err=True)

    def _echo(self, text: str) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            click.echo(text)

    def file(self, outcome: Any) -> None:
        from rtagx.cli.render import csv_rows, json_line, outcome_line

        if self.as_json:
            self._echo(json_line(outcome.as_json()))
        elif self.csv_writer is not None:
            self.csv_writer.writerows(csv_rows(outcome))
        elif self.list_files or outcome.action == "skipped":
            self._echo(outcome_line(outcome, removal=self.removal))

    def finish(self, summary: Any) -> int:
        from rtagx.cli.render import json_line, summary_lines

        self.close()
        if self.as_json:
            click.echo(json_line(summary.as_json()))
        elif not self.as_csv:
            for line in summary_lines(summary, removal=self.removal):
                click.echo(line, err=self.as_csv)
        if summary.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SKIPPED if summary.skipped else EXIT_OK


# -- shared by the commands -----------------------------------------------------------------------


def option_overrides(**kwargs: Any) -> dict[str, Any]:
    """The options given on the command line (not None): what overrides the config file and defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _on_terminal() -> bool:
    """A person is there to answer: stdin and stdout are both terminals (never true under cron)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


#: The --write targets that put keywords into the original files (the others write beside them).
WRITES_ORIGINALS = ("auto", "embed")


def confirm_first_write(settings: Any, paths: tuple[Path, ...], dry_run: bool, yes: bool) -> None:
    """Ask once before writing into a folder's originals for the first time, on a terminal only."""
    if yes or dry_run or settings.write not in WRITES_ORIGINALS:
        return
    if not _on_terminal():
        return
    from rtagx.run.retag import known_roots

    _ask_before_writing([p for p in paths if Path(p).resolve() not in known_roots(settings)])


def confirm_retag_writes(
    ctx: Context, settings: Any, paths: tuple[Path, ...], overrides: dict[str, Any], dry_run: bool, yes: bool
) -> None:
    """retag asks what tag asks, before it first writes into a folder's originals: a folder last
    tagged with --write sidecar, txt or none that retag's options now send into the files."""
    if yes or dry_run or not _on_terminal() or not settings.cache_path().exists():
        return
    from rtagx.cache.store import open_store
    from rtagx.settings import load_settings

    with open_store(settings.cache_path(), readonly=True) as store:
        roots = store.roots()
    wanted = [Path(p).resolve() for p in paths]
    new = []
    for root, remembered, _ in roots:
        if wanted and not any(root == w or root in w.parents or w in root.parents for w in wanted):
            continue
        effective = load_settings(overrides, config_path=ctx.config, base=remembered).write
        if effective in WRITES_ORIGINALS and remembered.get("write", "auto") not in WRITES_ORIGINALS:
            new.append(root)
    _ask_before_writing(new)


def _ask_before_writing(new: list[Path]) -> None:
    if not new:
        return
    names = ", ".join(str(p) for p in new[:3]) + (" ..." if len(new) > 3 else "")
    if not click.confirm(f"rtagx will write keywords into the original files under {names}. Go on?"):
        # A person's "no" is an answer, not a failure: nothing was touched, exit 0.
        click.echo("rtagx: nothing was written (--dry-run shows what would change; --yes skips this question)")
        sys.exit(EXIT_OK)


def analysis_settings(ctx: Context, options: dict[str, Any]) -> Any:
    """The settings of a command that reads vectors but writes no keyword (explain, eval, search, ...)."""
    from rtagx.settings import load_settings

    return load_settings(option_overrides(**options), config_path=ctx.config)


def analysis_renderer(ctx: Context, settings: Any) -> Renderer:
    """Progress bars while images are embedded; no per-file lines (the command prints its own)."""
    renderer = Renderer(ctx, as_json=False, as_csv=False, list_files=False, progress=not settings.no_progress)
    renderer.list_files = False
    renderer.file = lambda outcome: None  # type: ignore[method-assign]
    from rtagx.run.events import RunEvents

    renderer.events = RunEvents(
        on_stage=renderer.stage,
        on_progress=renderer.progress,
        on_wait_lock=renderer.wait_lock,
        on_message=renderer.message,
    )
    return renderer
