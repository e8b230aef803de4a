"""The ``rtagx`` command line: parse options, call the library, render results. No logic here.

Exit codes: 0 all good (a declined first-write question and a folder without images too); 1 fatal
error; 2 usage error (an option, argument, variable or config key); 3 finished but some files were
skipped or failed; 4 the cache is locked by another rtagx and --no-wait was given; 5 --engine ray cannot
run (Ray not installed, cluster unreachable or failed); 130 interrupted.
"""

from __future__ import annotations

import csv
import functools
import json
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
from rtagx.settings import CHOICES, DEFAULT_MAX_MEGAPIXELS

#: The codes the CLI itself decides; errors carry theirs (RtagxError 1, UsageError 2, LockBusyError 4).
EXIT_OK, EXIT_SKIPPED, EXIT_INTERRUPTED = 0, 3, 130
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


def _set_logging(verbose: int) -> None:
    """-v: rtagx's own info messages; -vv: debug messages from rtagx and the libraries (open_clip
    logs on the root logger)."""
    log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def _verbosity(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        obj = ctx.find_object(Context)
        if obj is None or not value:
            return
        if attr == "verbose":
            obj.verbose += int(value)
            _set_logging(obj.verbose)
        else:
            setattr(obj, attr, True)

    return callback


def _stacked(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Apply a group of click options to a command, the first listed shown first in its --help."""
    for option in reversed(options):
        fn = option(fn)
    return fn


def verbosity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-q/-v/--debug work after the command name too: `rtagx tag -v DIR` as well as `rtagx -v tag DIR`."""
    return _stacked(
        fn,
        [
            click.option(
                "--quiet",
                "-q",
                is_flag=True,
                expose_value=False,
                callback=_verbosity("quiet"),
                help="Only errors, skipped files with their reason, and the summary; no progress bars.",
            ),
            click.option(
                "--verbose",
                "-v",
                count=True,
                expose_value=False,
                callback=_verbosity("verbose"),
                help="List every file with its tags or skip reason (-vv: debug log).",
            ),
            click.option(
                "--debug",
                is_flag=True,
                expose_value=False,
                callback=_verbosity("debug"),
                help="Show tracebacks for errors.",
            ),
        ],
    )


MODEL_HELP = "open_clip model name, or path to an open_clip model config JSON; or a trained tagger: wd-vit-tagger-v3 (wd-swinv2-, wd-convnext-, wd-eva02-large-tagger-v3), joytag, hf-hub:OWNER/REPO, or a folder with its files."
PRETRAINED_HELP = "open_clip pretrained tag, or path to a local checkpoint file."


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _model_options(fn, repeatable=False)


def repeatable_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``tag``'s model options: --model (and --pretrained) may be given several times."""
    return _model_options(fn, repeatable=True)


def _model_options(fn: Callable[..., Any], *, repeatable: bool) -> Callable[..., Any]:
    more = " Repeat it to tag with several models at once: their keywords are united." if repeatable else ""
    more_p = " Repeatable: the Nth --pretrained goes with the Nth --model." if repeatable else ""
    return _stacked(
        fn,
        [
            click.option(
                "--model",
                "-m",
                default=None,
                multiple=repeatable,
                help=f"{MODEL_HELP}{more} [default: ViT-B-16]",
            ),
            click.option(
                "--pretrained",
                "-p",
                default=None,
                multiple=repeatable,
                help=f"{PRETRAINED_HELP}{more_p} [default: dfn2b]",
            ),
            click.option(
                "--device",
                type=click.Choice(CHOICES["device"]),
                default=None,
                help="Where to run the model; auto picks cuda, then mps, then cpu. [default: auto]",
            ),
            click.option(
                "--precision",
                type=click.Choice(CHOICES["precision"]),
                default=None,
                help="Inference precision. auto: fp16 autocast on GPUs; on the CPU bf16 weights where the CPU has bf16 instructions (AVX512-BF16/AMX; 2-4x fp32, cosine >= 0.9999), else fp32. int8: opt-in dynamic int8 image tower on the CPU (faster than fp32, cosine >= 0.99, a few tags change). [default: auto]",
            ),
            click.option(
                "--cpu-backend",
                type=click.Choice(CHOICES["cpu_backend"]),
                default=None,
                help="What runs the image tower on the CPU. auto: OpenVINO bf16 where it is installed (rtagx[openvino]) and the CPU has bf16 instructions (1.2x eager bf16 on 2 idle cores, up to 2x under load, cosine to fp32 >= 0.9999), else eager torch. compile: torch.compile (needs a C++ compiler). A backend is prepared in the background while eager encodes the first batches; one that is missing or fails falls back to eager. [default: auto]",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=0),
                default=None,
                help="Images per encoder batch (0: 16 on CPU, 128 on GPU).",
            ),
            click.option(
                "--workers", type=click.IntRange(min=0), default=None, help="Decode threads (0: from the CPU count)."
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=0),
                default=None,
                help="Torch CPU threads (0: torch's default, one per core).",
            ),
            click.option(
                "--max-megapixels",
                type=click.FloatRange(min=0),
                default=None,
                help="Skip images larger than this (decompression-bomb guard; 0: no limit). "
                f"[default: {DEFAULT_MAX_MEGAPIXELS:g}]",
            ),
            click.option("--offline", is_flag=True, default=None, help="Never try to download model weights."),
        ],
    )


def scoring_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--tags",
                "-t",
                default=None,
                help="Vocabulary: a file, or a shipped name (imagenet, coco, places365, openimages, photos). [default: imagenet]",
            ),
            click.option(
                "--templates",
                default=None,
                help="Prompt template ensemble: a name (default, imagenet80) overriding the vocabulary's choice.",
            ),
            click.option(
                "--threshold",
                type=click.FloatRange(-1, 1),
                default=None,
                help="Keep tags scoring at least this, in [-1, 1]: a cosine for CLIP models, a probability for SigLIP models (-1 keeps every tag). [default: per model: 0.25 cosine, 0.05 SigLIP]",
            ),
            click.option(
                "--top-k",
                type=click.IntRange(min=0),
                default=None,
                help="At most this many tags per image (0: no cap). [default: 10]",
            ),
            click.option(
                "--min-tags",
                type=click.IntRange(min=0),
                default=None,
                help="At least this many tags per image, best first, even below the threshold.",
            ),
            click.option(
                "--margin",
                type=click.FloatRange(0, 2),
                default=None,
                help="Relative cut: keep only tags scoring within this of the image's best tag (e.g. 0.05).",
            ),
            click.option(
                "--min-share",
                type=click.FloatRange(0, 1),
                default=None,
                help="Relative cut: keep only tags with at least this softmax share of the vocabulary (e.g. 0.02); for vocabularies of exclusive classes.",
            ),
            click.option(
                "--temperature",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Softmax temperature for --min-share, in cosine units. [default: 0.01, CLIP's own]",
            ),
            click.option(
                "--ratings",
                is_flag=True,
                default=None,
                help="Trained taggers (WD14): also write the model's most likely rating tag (general, sensitive, ...).",
            ),
        ],
    )


def write_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--write",
                "write",
                type=click.Choice(CHOICES["write"]),
                default=None,
                help="Where keywords go: auto embeds into JPEG/TIFF/PNG/WebP and uses XMP sidecars for RAW/HEIC/others. [default: auto]",
            ),
            click.option(
                "--mode",
                type=click.Choice(CHOICES["mode"]),
                default=None,
                help="merge only adds; replace-own replaces rtagx's earlier keywords; replace-all replaces every keyword. [default: replace-own]",
            ),
            click.option(
                "--sidecar-style",
                type=click.Choice(CHOICES["sidecar_style"]),
                default=None,
                help="Sidecar name: IMG.CR2.xmp (ext) or IMG.xmp (stem). [default: ext]",
            ),
            click.option("--caption-ext", default=None, help="Extension of --write txt caption files. [default: .txt]"),
            click.option(
                "--keyword-root",
                default=None,
                help="Put rtagx's keywords under this parent in the keyword hierarchy (e.g. auto).",
            ),
            click.option(
                "--with-ancestors",
                is_flag=True,
                default=None,
                help="Also write each tag's ancestors (animal, dog for animal|dog|beagle) as keywords.",
            ),
            click.option(
                "--preserve-mtime",
                is_flag=True,
                default=None,
                help="Keep files' modification times after writing keywords.",
            ),
            click.option(
                "--dry-run",
                "-n",
                is_flag=True,
                help="Show what would change; write nothing (the cache still learns new vectors).",
            ),
            click.option(
                "--yes", "-y", is_flag=True, help="Do not ask before the first write into a folder's original files."
            ),
        ],
    )


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--json", "as_json", is_flag=True, help="Print JSON lines: one object per file, then a summary object."
            ),
            click.option("--csv", "as_csv", is_flag=True, help="Print path,tag,score,action CSV rows."),
            click.option(
                "--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]"
            ),
            click.option(
                "--no-wait",
                is_flag=True,
                default=None,
                help="Exit with code 4 instead of waiting when another rtagx holds the cache.",
            ),
        ],
    )


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where images are embedded: this process, or a Ray cluster (README: "More than one machine")."""
    return _stacked(
        fn,
        [
            click.option(
                "--engine",
                type=click.Choice(CHOICES["engine"]),
                default=None,
                help="Where images are embedded: local (this process) or ray (a Ray cluster; pip install 'rtagx[ray]'). Scanning, the cache and keyword writing stay here. [default: local]",
            ),
            click.option(
                "--ray-address",
                default=None,
                help="The Ray cluster: auto (the one this machine belongs to), HOST:PORT, or ray://HOST:PORT (Ray Client). [default: RAY_ADDRESS, else the Ray running here, else a new one on this machine]",
            ),
            click.option(
                "--ray-actors",
                type=click.IntRange(min=0),
                default=None,
                help="Encoder actors, each loading the model once (0: one per GPU; without GPUs one per node, at most half the CPUs).",
            ),
            click.option(
                "--ray-gpus-per-actor",
                type=click.FloatRange(min=0),
                default=None,
                help="GPUs each encoder actor reserves (0.5: two actors share a GPU). [default: 1 when the cluster has GPUs, else 0]",
            ),
            click.option(
                "--ray-ship-bytes",
                is_flag=True,
                default=None,
                help="Read each file on the driver's node and ship its bytes to the workers, for photos not on storage every node mounts at the same path.",
            ),
        ],
    )


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
    _set_logging(verbose)
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


def _overrides(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _on_terminal() -> bool:
    """A person is there to answer: stdin and stdout are both terminals (never true under cron)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


#: The --write targets that put keywords into the original files (the others write beside them).
WRITES_ORIGINALS = ("auto", "embed")


def _confirm_first_write(settings: Any, paths: tuple[Path, ...], dry_run: bool, yes: bool) -> None:
    """Ask once before writing into a folder's originals for the first time, on a terminal only."""
    if yes or dry_run or settings.write not in WRITES_ORIGINALS:
        return
    if not _on_terminal():
        return
    from rtagx.run.retag import known_roots

    _ask_before_writing([p for p in paths if Path(p).resolve() not in known_roots(settings)])


def _confirm_retag_writes(
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


# -- commands -------------------------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@repeatable_model_options
@scoring_options
@write_options
@output_options
@click.option(
    "--ext",
    "extensions",
    default=None,
    help="Comma-separated extensions to scan (e.g. .jpg,.png). [default: every supported format]",
)
@click.option("--exclude", multiple=True, help="Skip files or folders matching this glob (repeatable).")
@click.option("--hidden", "include_hidden", is_flag=True, default=None, help="Also scan hidden files and folders.")
@click.option("--follow-symlinks", is_flag=True, default=None, help="Follow symlinked folders (loops are detected).")
@click.option(
    "--rehash",
    is_flag=True,
    default=None,
    help="Hash every file's image data instead of trusting unchanged size, mtime, ctime and inode.",
)
@engine_options
@verbosity_options
@click.pass_obj
@handle_errors
def tag(
    ctx: Context,
    paths: tuple[Path, ...],
    dry_run: bool,
    yes: bool,
    as_json: bool,
    as_csv: bool,
    exclude: tuple[str, ...],
    **options: Any,
) -> None:
    """Embed new images under PATHS, score them against a vocabulary and write keywords.

    Unchanged files are not decoded again: their vectors come from the cache.
    """
    from rtagx.run.tag import run_tag
    from rtagx.settings import load_settings

    if not paths:
        raise click.UsageError("give at least one PATH (a folder or image files)")
    models, pretrained = list(options.pop("model") or ()), list(options.pop("pretrained") or ())
    if len(models) <= 1:
        pretrained = pretrained[-1:]  # one model: the last --pretrained wins, as always
    elif len(pretrained) > len(models):
        raise click.UsageError("more --pretrained than --model: the Nth --pretrained goes with the Nth --model")
    several = len(models) > 1  # as a list, like `model = [...]` in the config file (Settings decides)
    overrides = _overrides(
        model=models if several else models[0] if models else None,
        pretrained=pretrained if several and pretrained else pretrained[0] if pretrained else None,
        **options,
    )
    if exclude:
        overrides["exclude"] = exclude
    settings = load_settings(overrides, config_path=ctx.config)
    extra = list(settings.extra_models)
    _confirm_first_write(settings, paths, dry_run, yes)
    renderer = Renderer(ctx, as_json=as_json, as_csv=as_csv, list_files=dry_run, progress=not settings.no_progress)
    try:
        summary = run_tag(
            list(paths), settings, dry_run=dry_run, events=renderer.events, clear_untagged=True, extra_models=extra
        )
    finally:
        renderer.close()
    if summary.seen == 0 and not summary.interrupted and not summary.left_untagged:
        from rtagx.run.scan import selected_extensions

        looked_for = " ".join(sorted(selected_extensions(settings)))
        click.echo(f"rtagx: no image found under {', '.join(map(str, paths))} (looked for {looked_for})", err=True)
    sys.exit(renderer.finish(summary))


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@scoring_options
@write_options
@output_options
@click.option(
    "--offline", is_flag=True, default=None, help="Never try to download model weights (only needed for new prompts)."
)
@verbosity_options
@click.pass_obj
@handle_errors
def retag(
    ctx: Context, paths: tuple[Path, ...], dry_run: bool, yes: bool, as_json: bool, as_csv: bool, **options: Any
) -> None:
    """Re-score cached vectors with new options and rewrite keywords where the tags changed.

    No image is decoded and no image model is loaded. With no PATHS, every folder `tag` has
    processed is covered, each with the settings it was last tagged with unless options say else.
    """
    from rtagx.run.retag import run_retag
    from rtagx.settings import load_settings

    overrides = _overrides(**options)
    settings = load_settings(overrides, config_path=ctx.config)
    _confirm_retag_writes(ctx, settings, paths, overrides, dry_run, yes)
    renderer = Renderer(ctx, as_json=as_json, as_csv=as_csv, list_files=dry_run, progress=not settings.no_progress)
    try:
        summary = run_retag(list(paths), overrides, dry_run=dry_run, events=renderer.events, config_path=ctx.config)
    finally:
        renderer.close()
    sys.exit(renderer.finish(summary))


def _analysis_settings(ctx: Context, options: dict[str, Any]) -> Any:
    from rtagx.settings import load_settings

    return load_settings(_overrides(**options), config_path=ctx.config)


def _analysis_renderer(ctx: Context, settings: Any) -> Renderer:
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


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@scoring_options
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]")
@click.option(
    "--top", default=20, show_default=True, type=click.IntRange(min=1), help="How many of the best tags to show."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@verbosity_options
@click.pass_obj
@handle_errors
def explain(ctx: Context, images: tuple[Path, ...], top: int, as_json: bool, **options: Any) -> None:
    """Show an image's best tags, their scores and which threshold each passed or failed.

    The tool for choosing thresholds: nothing is written (the cache learns the image's vector).
    """
    from rtagx.analysis.analyze import score_images_at
    from rtagx.analysis.evaluate import explain_scores
    from rtagx.cli.render import display_path

    settings = _analysis_settings(ctx, options)
    renderer = _analysis_renderer(ctx, settings)
    try:
        scored = score_images_at(list(images), settings, events=renderer.events)
    finally:
        renderer.close()
    for path in scored.missing:
        click.echo(
            f"rtagx: {display_path(path)}: no vector: not an image rtagx can read "
            f"(`rtagx tag --dry-run -v {display_path(path)}` says why and writes nothing)",
            err=True,
        )
    for path, row in zip(scored.paths, scored.scores):
        ex = explain_scores(
            row,
            scored.vocabulary,
            scored.options,
            model_name=scored.model_name,
            probabilities=scored.probabilities,
            top=top,
        )
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "path": display_path(path),
                        "chosen": ex.chosen,
                        "threshold": ex.global_threshold,
                        "threshold_source": ex.threshold_source,
                        "probabilities": ex.probabilities,
                        "tags": [
                            {
                                "tag": v.keyword,
                                "rank": v.rank,
                                "score": round(v.score, 4),
                                "threshold": round(v.threshold, 4) if v.threshold > -1e9 else None,
                                "chosen": v.chosen,
                                "reason": v.reason,
                            }
                            for v in ex.verdicts
                        ],
                    },
                    ensure_ascii=False,
                )
            )
            continue
        kind = "probability" if ex.probabilities else "cosine"
        click.echo(
            f"{display_path(path)}  ({scored.model_name}, {scored.vocabulary.source}; "
            f"threshold {ex.global_threshold:.4f} {kind} from {ex.threshold_source})"
        )
        click.echo(f"  {'rank':>4}  {'score':>7}  {'':1}  {'tag':<32} why")
        for v in ex.verdicts:
            mark = "*" if v.chosen else " "
            click.echo(f"  {v.rank:>4}  {v.score:7.4f}  {mark}  {v.keyword[:32]:<32} {v.reason}")
        click.echo(f"  chosen: {', '.join(ex.chosen) if ex.chosen else '(none)'}")
    sys.exit(EXIT_SKIPPED if scored.missing else EXIT_OK)


def _listed(names: list[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _listed_counts(counts: dict[str, int], most: int = 10) -> str:
    """'cat (3 images), dgo (1 image)': labels with how many images carry them."""
    return _listed([f"{k} ({v} image{'s' if v != 1 else ''})" for k, v in sorted(counts.items())], most)


def _score_labelled(ctx: Context, directory: Path, labels: Path | None, options: dict[str, Any]) -> Any:
    """What eval and calibrate share: settings, progress bars, and the labelled images' scores."""
    from rtagx.analysis.analyze import score_labelled

    settings = _analysis_settings(ctx, options)
    renderer = _analysis_renderer(ctx, settings)
    try:
        return score_labelled(directory, labels, settings, events=renderer.events)
    finally:
        renderer.close()


@cli.command("eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV of path,label[;label...] rows (paths relative to the CSV). Without it DIRECTORY holds one folder per label.",
)
@model_options
@scoring_options
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]")
@click.option("--per-tag", is_flag=True, help="Also print precision, recall and F1 for every tag.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@verbosity_options
@click.pass_obj
@handle_errors
def eval_cmd(ctx: Context, directory: Path, labels: Path | None, per_tag: bool, as_json: bool, **options: Any) -> None:
    """Measure the current settings on labelled photos: top-1/top-5, precision, recall, F1.

    Nothing is written into the images; their vectors are cached for the next run.
    """
    import dataclasses

    from rtagx.analysis.evaluate import evaluate

    scored, truth, unknown = _score_labelled(ctx, directory, labels, options)
    report = evaluate(
        scored.scores,
        truth,
        scored.vocabulary,
        scored.options,
        model_name=scored.model_name,
        probabilities=scored.probabilities,
        unknown_labels=unknown,
    )
    if as_json:
        out = dataclasses.asdict(report)
        out["missing"] = [str(p) for p in scored.missing]
        click.echo(json.dumps(out, ensure_ascii=False))
    else:
        click.echo(
            f"{report.images} labelled images ({'single' if report.single_label else 'multi'}-label), "
            f"vocabulary {scored.vocabulary.source}, model {scored.model_name}"
        )
        if report.top1 is not None:
            click.echo(f"top-1 {report.top1:.3f}   top-5 {report.top5:.3f}")
        click.echo(
            f"precision {report.precision:.3f}   recall {report.recall:.3f}   F1 {report.f1:.3f}   "
            f"macro-F1 {report.macro_f1:.3f} (mean over the {sum(t.support > 0 for t in report.per_tag)} "
            "labelled tags)"
        )
        if per_tag:
            click.echo(f"  {'tag':<32} {'support':>7} {'chosen':>6} {'prec':>6} {'recall':>6} {'F1':>6}")
            for t in sorted(report.per_tag, key=lambda t: (-t.support, t.keyword)):
                click.echo(
                    f"  {t.keyword[:32]:<32} {t.support:>7} {t.predicted:>6} {t.precision:6.3f} {t.recall:6.3f} {t.f1:6.3f}"
                )
        if unknown:
            click.echo(f"rtagx: labels that match no tag of the vocabulary: {_listed_counts(unknown)}", err=True)
        if scored.missing:
            click.echo(f"rtagx: {len(scored.missing)} labelled images could not be read", err=True)
    sys.exit(EXIT_SKIPPED if scored.missing else EXIT_OK)


@cli.command()
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--from-reviews",
    is_flag=True,
    help="Fit on the accept/reject decisions made in `rtagx review` (kept in the cache) instead of DIRECTORY.",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CSV of path,label[;label...] rows. Without it DIRECTORY holds one folder per label.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the calibrated vocabulary (use it with --tags).",
)
@click.option(
    "--min-support",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Tags with fewer labelled images keep their threshold.",
)
@model_options
@scoring_options
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]")
@verbosity_options
@click.pass_obj
@handle_errors
def calibrate(
    ctx: Context,
    directory: Path | None,
    from_reviews: bool,
    labels: Path | None,
    output: Path,
    min_support: int,
    **options: Any,
) -> None:
    """Fit per-tag thresholds that maximize F1 on labelled photos (DIRECTORY) or on the decisions made
    in `rtagx review` (--from-reviews); write them as a vocabulary file."""
    if from_reviews:
        _calibrate_from_reviews(ctx, output, min_support, options)
        return
    if directory is None:
        raise UsageError("give DIRECTORY of labelled photos, or --from-reviews")
    from rtagx.analysis.evaluate import calibrate as fit

    scored, truth, unknown = _score_labelled(ctx, directory, labels, options)
    result = fit(
        scored.scores,
        truth,
        scored.vocabulary,
        min_support=min_support,
        options=scored.options,
        model_name=scored.model_name,
        probabilities=scored.probabilities,
    )
    from rtagx.analysis.analyze import write_text_atomically

    write_text_atomically(output, result.to_text())
    click.echo(
        f"{len(result.tags)} tags calibrated on {result.images} images, {len(result.skipped)} kept their "
        f"threshold (fewer than {min_support} examples); wrote {output}"
    )
    shown = 15
    ranked = sorted(result.tags, key=lambda t: -t.support)
    for t in ranked[:shown]:
        click.echo(
            f"  {t.keyword[:32]:<32} threshold {t.previous_threshold:.4f} -> {t.threshold:.4f}   "
            f"F1 {t.previous_f1:.3f} -> {t.f1:.3f}  ({t.support} images)"
        )
    if len(ranked) > shown:
        click.echo(f"  ... and {len(ranked) - shown} more tags (every threshold is in {output})")
    click.echo(
        "F1 is each tag's alone, before --top-k, --min-tags, relative cuts and exclusive groups: "
        f"`rtagx eval --tags {output} --top-k 0` reproduces it; tag's cuts can only lower recall."
    )
    negative = [t.keyword for t in result.tags if t.threshold < 0 and not t.tags_every_image]
    if negative:
        click.echo(
            f"rtagx: negative thresholds for {_listed(negative)}: such a tag is written on nearly every "
            "photo; check it before use",
            err=True,
        )
    everything = [t.keyword for t in result.tags if t.tags_every_image]
    if everything:
        click.echo(
            f"rtagx: the best threshold keeps every labelled image for {_listed(everything)}: too few "
            "images without the label, or a tag the model cannot tell apart; check it before use",
            err=True,
        )
    if unknown:
        click.echo(f"rtagx: labels that match no tag of the vocabulary: {_listed_counts(unknown)}", err=True)
    sys.exit(EXIT_SKIPPED if scored.missing else EXIT_OK)


@cli.group()
def cache() -> None:
    """Inspect and maintain the vector cache."""


@cache.command("path")
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE).")
@click.pass_obj
@handle_errors
def cache_path(ctx: Context, cache: str | None) -> None:
    """Print where the cache file is."""
    from rtagx.settings import load_settings

    click.echo(str(load_settings(_overrides(cache=cache), config_path=ctx.config).cache_path()))


@cache.command("stats")
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def cache_stats(ctx: Context, cache: str | None, as_json: bool) -> None:
    """Files, models, roots and size on disk."""
    from rtagx.cache.store import open_store
    from rtagx.settings import load_settings

    settings = load_settings(_overrides(cache=cache), config_path=ctx.config)
    with open_store(settings.cache_path(), readonly=True) as store:
        stats = store.stats()
        for m in stats["models"]:  # what tells two models of one name apart: their weights
            info = store.model_info(m["id"])
            m["pretrained"] = info.get("pretrained")
            m["weights"] = (info.get("checkpoint_hash") or "")[:12] or None
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False))
        return
    click.echo(f"cache      {stats['path']} ({stats['size_bytes'] / 1e6:.1f} MB, schema {stats['schema_version']})")
    click.echo(f"files      {stats['files']} ({stats['contents']} distinct contents)")
    click.echo(f"vectors    {stats['vectors']} image, {stats['text_vectors']} prompt")
    for m in stats["models"]:
        weights = f", weights {m['weights']}" if m["weights"] else ""
        click.echo(f"model      {m['name']} ({m['pretrained']}{weights}): {m['vectors']} vectors  [{m['key']}]")
    for r in stats["roots"]:
        click.echo(f"root       {r}")
    for u in stats.get("untagged", []):
        click.echo(f"untagged   {u}")


@cache.command("prune")
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE).")
@click.option(
    "--keep-model",
    "keep_models",
    multiple=True,
    help="Keep vectors of this model (name); others are dropped. Without it, every model's vectors are kept.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Count what would go; change nothing.")
@click.option("--no-wait", is_flag=True, default=None, help="Exit with code 4 instead of waiting for the cache lock.")
@click.pass_obj
@handle_errors
def cache_prune(
    ctx: Context, cache: str | None, keep_models: tuple[str, ...], dry_run: bool, no_wait: bool | None
) -> None:
    """Forget deleted files, vectors no file uses, and (with --keep-model) other models."""
    from rtagx.run.prune import prune_cache
    from rtagx.settings import load_settings

    settings = load_settings(_overrides(cache=cache, no_wait=no_wait), config_path=ctx.config)
    counts = prune_cache(settings, keep_models, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb}: {counts['files']} missing files, {counts['vectors']} vectors, {counts['models']} models, "
        f"{counts.get('thumbnails', 0)} review thumbnails"
    )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--write",
    "write",
    type=click.Choice([c for c in CHOICES["write"] if c != "none"]),
    default=None,
    help="Where rtagx wrote keywords. [default: as recorded in the cache, else auto]",
)
@click.option(
    "--sidecar-style",
    type=click.Choice(CHOICES["sidecar_style"]),
    default=None,
    help="Sidecar naming used when writing.",
)
@click.option("--caption-ext", default=None, help="Extension of the --write txt caption files. [default: as recorded]")
@click.option("--preserve-mtime", is_flag=True, default=None, help="Keep files' modification times.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
@output_options
@verbosity_options
@click.pass_obj
@handle_errors
def untag(ctx: Context, paths: tuple[Path, ...], dry_run: bool, as_json: bool, as_csv: bool, **options: Any) -> None:
    """Remove exactly the keywords rtagx wrote (and its private record); a person's keywords stay.

    A folder or file untagged inside a tagged folder stays untagged: later runs over that folder
    (retag, tag, watch) leave it alone until `rtagx tag` is run on it (or inside it). Untagging a
    whole tagged folder forgets it.
    """
    from rtagx.run.untag import run_untag
    from rtagx.settings import load_settings

    settings = load_settings(_overrides(**options), config_path=ctx.config)
    renderer = Renderer(
        ctx, as_json=as_json, as_csv=as_csv, list_files=True, progress=not settings.no_progress, removal=True
    )
    try:
        summary = run_untag(list(paths), settings, dry_run=dry_run, events=renderer.events)
    finally:
        renderer.close()
    sys.exit(renderer.finish(summary))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE).")
@click.option(
    "--top", default=10, show_default=True, type=click.IntRange(min=1), help="How many cached scores to show."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file.")
@verbosity_options
@click.pass_obj
@handle_errors
def show(ctx: Context, paths: tuple[Path, ...], cache: str | None, top: int, as_json: bool) -> None:
    """Show the keywords a file carries now, which ones rtagx owns, and its cached scores."""
    from rtagx.analysis.show import describe_file
    from rtagx.cli.render import display_path
    from rtagx.settings import load_settings

    settings = load_settings(_overrides(cache=cache), config_path=ctx.config)
    failed = 0
    for path in paths:
        if path.is_dir():  # show is about one file's keywords; a folder has none of its own
            failed += 1
            click.echo(
                f"rtagx: {display_path(path)}: a folder; show takes image files (e.g. `rtagx show "
                f"{display_path(path)}/*.jpg`)",
                err=True,
            )
            continue
        info = describe_file(path, settings, top=top)
        failed += "error" in info
        if as_json:
            click.echo(json.dumps(info, ensure_ascii=False, default=str))
            continue
        owned = set(info.get("owned", []))
        click.echo(display_path(info["path"]))
        if "error" in info:
            click.echo(f"  error:    {info['error']}")
        kws = [f"{k} (rtagx)" if k in owned else k for k in info.get("keywords", [])]
        click.echo(f"  keywords: {', '.join(kws) if kws else '(none)'}")
        if info.get("scores"):
            click.echo(f"  scores ({info.get('model')}, {info.get('vocabulary')}):")
            for name, score in info["scores"]:
                click.echo(f"    {score:7.4f}  {name}")
        elif not info.get("cached"):
            click.echo("  not in the cache (run `rtagx tag` on it)")
    sys.exit(EXIT_SKIPPED if failed else EXIT_OK)


@cli.group("config")
def config_group() -> None:
    """Show the effective settings."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def config_show(ctx: Context, as_json: bool) -> None:
    """Print every setting, its value and where it came from (default, config file, env, option)."""
    from rtagx.settings import config_key, default_config_path, load_settings

    settings = load_settings(config_path=ctx.config)
    values = settings.as_dict()
    values["cache"] = str(settings.cache_path())
    if settings.extra_models:  # a list of models: every one, the first first
        values["model"] = tuple(name for name, _ in settings.models())
        values["pretrained"] = tuple(weights for _, weights in settings.models())
    if as_json:
        click.echo(
            json.dumps({k: {"value": v, "from": settings.sources.get(k)} for k, v in values.items()}, default=str)
        )
        return
    click.echo(f"# config file: {ctx.config or os.environ.get('RTAGX_CONFIG') or default_config_path()}")
    for key, value in values.items():
        shown = (
            "auto"  # the setting's own default applies (the model's threshold, CPU detection, ...)
            if value is None
            else ",".join(value)
            if isinstance(value, tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else value
        )
        click.echo(f"{config_key(key):<16} = {shown!s:<28} # {settings.sources.get(key)}")


@cli.command()
@click.option("--model", "-m", default=None, help="Model to check (default: the configured one).")
@click.option("--pretrained", "-p", default=None, help="Weights to check (default: the configured ones).")
@click.option("--download", is_flag=True, help="Download the model weights now if they are missing (needs a network).")
@verbosity_options
@click.pass_obj
@handle_errors
def doctor(ctx: Context, model: str | None, pretrained: str | None, download: bool) -> None:
    """Check Python, torch and the device, the model weights, metadata libraries, extras and the cache."""
    from rtagx.analysis.doctor import run_checks
    from rtagx.model.encoder import load_tokenizer, resolve_model
    from rtagx.settings import load_settings

    settings = load_settings(_overrides(model=model, pretrained=pretrained), config_path=ctx.config)
    if download:  # the weights, and the tokenizer files of models with a Hugging Face tokenizer
        load_tokenizer(resolve_model(settings.model, settings.pretrained, offline=False))
    checks = run_checks(settings)
    for c in checks:
        line = f"{c.status:<5} {c.name:<12} {c.finding}"
        if c.fix:
            line += f"\n{'':<19}fix: {c.fix}"
        click.echo(line)
    sys.exit(EXIT_FATAL if any(c.status == "FAIL" for c in checks) else EXIT_OK)


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


# -- find photos: search and duplicates from the cache (rtagx/analysis/search.py, duplicates.py) --------


def _cached_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Which cached vectors to use."""
    return _stacked(
        fn,
        [
            click.option(
                "--model",
                "-m",
                default=None,
                help="Use the vectors of this model (name or config path). [default: the model that tagged PATHS, else the newest in the cache]",
            ),
            click.option("--pretrained", "-p", default=None, help="Weights of --model (tag or checkpoint path)."),
            click.option(
                "--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]"
            ),
        ],
    )


def _write_html(ctx: Context, target: Path, page: str) -> None:
    from rtagx.analysis.html import write_page

    write_page(target, page)
    if not ctx.quiet:
        click.echo(f"rtagx: wrote {target}", err=True)


@cli.command()
@click.argument("query", nargs=-1)
@click.option(
    "--like",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Find images like this one (repeatable; embedded on the fly when the cache lacks it).",
)
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1), help="How many images to list.")
@click.option(
    "--min-score",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Only images whose cosine with the query is at least this.",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a page of the results with thumbnails (self-contained).",
)
@_cached_model_options
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda", "mps"]),
    default=None,
    help="Where to encode query texts and images the cache lacks (cached query texts need no model). [default: auto]",
)
@click.option("--offline", is_flag=True, default=None, help="Never try to download model weights.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: one object per image, then a summary object.")
@click.option("--csv", "as_csv", is_flag=True, help="Print rank,score,path CSV rows.")
@click.option("--print0", "-0", is_flag=True, help="End each path with a NUL byte, exactly as on disk (for xargs -0).")
@verbosity_options
@click.pass_obj
@handle_errors
def search(
    ctx: Context,
    query: tuple[str, ...],
    like: tuple[Path, ...],
    top: int,
    min_score: float | None,
    html_file: Path | None,
    as_json: bool,
    as_csv: bool,
    print0: bool,
    **options: Any,
) -> None:
    """Find cached images by text or by example: one path per line, best first.

    \b
    QUERY words form one text; + and - combine texts and images, W: weights a term:
      rtagx search dog on a beach ~/Photos
      rtagx search "beach + sunset - people"
      rtagx search 2:mountain - snow --like ~/Photos/IMG_0042.jpg
    Arguments that are existing folders limit the search to them (default: the whole cache);
    an argument that is an image file is an image query. No image of the library is decoded.
    """
    from rtagx.analysis.search import search as run_search
    from rtagx.cli.render import display_path, json_line

    words = [q for q in query if not os.path.isdir(os.path.expanduser(q))]
    scope = [Path(q) for q in query if os.path.isdir(os.path.expanduser(q))]
    result = run_search(words, _analysis_settings(ctx, options), scope=scope, like=like, top=top, min_score=min_score)
    if as_json:
        for hit in result.hits:
            click.echo(json_line(hit.as_json()))
        click.echo(
            json_line(
                {
                    "summary": True,
                    "results": len(result.hits),
                    "compared": result.compared,
                    "model": result.model.name,
                    "timings": {k: round(v, 4) for k, v in result.timings.items()},
                }
            )
        )
    elif print0:
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(os.fsencode(hit.path) + b"\0" for hit in result.hits))
        sys.stdout.buffer.flush()
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["rank", "score", "path"])
        for hit in result.hits:
            writer.writerow([hit.rank, f"{hit.score:.4f}", display_path(hit.path)])
    else:
        for hit in result.hits:
            click.echo(f"{hit.score:.4f}  {display_path(hit.path)}" if ctx.verbose else display_path(hit.path))
        if ctx.verbose:
            took = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
            click.echo(
                f"{len(result.hits)} of {result.compared} cached images, model {result.model.name} ({took})", err=True
            )
    if html_file:
        from rtagx.analysis.html import search_page

        _write_html(ctx, html_file, search_page(result))


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--min-score",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Cosine at which two photos count as duplicates. [default: auto, from the model's scale in this library (about 0.955 for CLIP ViT-B: an estimate)]",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a page of the groups side by side, keepers marked (self-contained).",
)
@_cached_model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines: one object per group, then a summary object.")
@click.option("--csv", "as_csv", is_flag=True, help="Print group,keeper,score,width,height,taken,path CSV rows.")
@verbosity_options
@click.pass_obj
@handle_errors
def duplicates(
    ctx: Context,
    paths: tuple[Path, ...],
    min_score: float | None,
    html_file: Path | None,
    as_json: bool,
    as_csv: bool,
    **options: Any,
) -> None:
    """Group near-duplicate and identical photos from the cache; suggest which one to keep.

    Re-encoded, resized and lightly cropped copies and bursts are found by their cached vectors,
    byte-identical copies by their shared content. The keeper has the most pixels, then the
    oldest date. Nothing is ever deleted or moved.
    """
    from rtagx.analysis.duplicates import find_duplicates
    from rtagx.cli.render import display_path, json_line

    result = find_duplicates(_analysis_settings(ctx, options), scope=list(paths), min_score=min_score)
    spare = sum(len(g.members) - 1 for g in result.groups)
    if as_json:
        for number, group in enumerate(result.groups, 1):
            click.echo(json_line(group.as_json(number)))
        click.echo(
            json_line(
                {
                    "summary": True,
                    "groups": len(result.groups),
                    "spare_files": spare,
                    "compared": result.compared,
                    "min_score": round(result.threshold, 5),
                    "min_score_source": result.threshold_source,
                    "model": result.model.name,
                }
            )
        )
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["group", "keeper", "score", "width", "height", "taken", "path"])
        for number, group in enumerate(result.groups, 1):
            for m in group.members:
                writer.writerow(
                    [number, int(m.keeper), f"{m.score:.4f}", m.width, m.height, m.taken, display_path(m.path)]
                )
    else:
        for number, group in enumerate(result.groups, 1):
            click.echo(
                f"group {number}: {len(group.members)} files, keep {display_path(group.keeper.path.name)}: {group.why}"
            )
            for m in group.members:
                mark = "keep" if m.keeper else "same" if m.same_content else f"{m.score:.4f}"
                size = f"{m.width}x{m.height}" if m.width else "?"
                click.echo(f"  {mark:<7} {size:>11}  {m.taken:<26} {display_path(m.path)}")
        click.echo(
            f"{len(result.groups)} groups, {spare} files that could go (nothing was deleted or moved); "
            f"{result.compared} cached images, min score {result.threshold:.4f} ({result.threshold_source})"
        )
    if html_file:
        from rtagx.analysis.html import duplicates_page

        _write_html(ctx, html_file, duplicates_page(result))


# -- export (issue 13): vectors and tags for data pipelines (rtagx/analysis/export.py) -------------


@cli.command("export")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--to",
    "to",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write into (created; must be empty unless --overwrite).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npy", "parquet"]),
    default="npy",
    show_default=True,
    help="npy: clip-retrieval's layout, img_emb/img_emb_0000.npy (float16) + metadata/metadata_0000.parquet; parquet: part_0000.parquet shards with a float32 `embedding` column beside the metadata.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Rows per shard.",
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in the folder (its files only).")
@_cached_model_options
@scoring_options
@click.option(
    "--offline", is_flag=True, default=None, help="Never try to download model weights (only for new prompts)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object.")
@verbosity_options
@click.pass_obj
@handle_errors
def export_cmd(
    ctx: Context,
    paths: tuple[Path, ...],
    to: Path,
    fmt: str,
    shard_size: int,
    overwrite: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Export cached vectors with paths, content keys and chosen tags, for data pipelines.

    Every vector of one model (--model, else the one PATHS were tagged with, else the newest in the
    cache) of the files under PATHS (default: every file the cache knows), with the tags
    `retag --dry-run` would choose. Read by pyarrow, DuckDB, Spark, faiss and autofaiss. No image is decoded; memory
    stays bounded; each shard appears whole or not at all. Needs `pip install 'rtagx[export]'`.
    """
    from rtagx.analysis.export import export_vectors
    from rtagx.cli.render import json_line

    overrides = _overrides(**options)
    settings = _analysis_settings(ctx, options)
    renderer = _analysis_renderer(ctx, settings)
    try:
        result = export_vectors(
            list(paths),
            overrides,
            to=to,
            fmt=fmt,
            shard_rows=shard_size,
            overwrite=overwrite,
            events=renderer.events,
            config_path=ctx.config,
        )
    finally:
        renderer.close()
    if as_json:
        click.echo(json_line(result.as_json()))
        return
    if ctx.quiet:
        return
    summary = result.as_json()
    sources = ", ".join(f"{k} {n}" for k, n in summary["tags_from"].items())
    click.echo(
        f"exported {result.rows} vectors of {result.model.name or result.model.key} ({result.model.dim} x "
        f"{result.dtype}) to {result.to}: {summary['shards']} shard{'s' * (summary['shards'] != 1)}, "
        f"{result.bytes / 1e6:.1f} MB, in {result.seconds:.1f} s ({summary['rows_per_second']:.0f} rows/s); tags: {sources}"
    )
    for name in result.files[:6]:
        click.echo(f"  {name}")
    if len(result.files) > 6:
        click.echo(f"  ... {len(result.files) - 6} more")


# -- watch (issue 17): a separate block, kept at the end of the file ------------------------------


def _round_line(r: Any) -> str:
    """One log line per round, with the wall-clock time (cron and service logs have none)."""
    import datetime

    at = datetime.datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
    if r.kind == "forget":
        return f"{at} forgot {r.files} deleted file{'s' * (r.files != 1)}"
    s = r.summary
    what = f"{r.files} folder{'s' * (r.files != 1)}" if r.roots else f"{r.files} file{'s' * (r.files != 1)}"
    skipped = f"skipped {s.skipped}"
    if s.skip_reasons:
        skipped += " (" + ", ".join(f"{k} {n}" for k, n in sorted(s.skip_reasons.items())) + ")"
    return (
        f"{at} round {r.number} ({r.kind}, {what}): {s.seen} seen, embedded {s.embedded}, reused {s.reused}, "
        f"{'would write' if s.dry_run else 'written'} {s.written}, unchanged {s.unchanged}, {skipped}, "
        f"{s.wall_seconds:.1f}s"
    )


@cli.command("watch")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds a new or changed file's size and mtime must hold still before it is tagged.",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Scan for changes every SECONDS instead of using file-system events (network mounts, where none arrive).",
)
@click.option(
    "--print-service",
    type=click.Choice(["systemd", "launchd"]),
    default=None,
    help="Print a systemd user unit or a launchd agent plist running this command line, and exit.",
)
@click.pass_obj
@handle_errors
def watch_cmd(
    ctx: Context,
    paths: tuple[Path, ...],
    settle: float,
    poll: float | None,
    print_service: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    as_csv: bool,
    exclude: tuple[str, ...],
    **options: Any,
) -> None:
    """Tag photos the moment they land in the folders PATHS; takes every option of `tag`.

    Catches up like `tag`, then follows file-system events. A file is tagged once its size and mtime
    held still for --settle seconds; new files are tagged in rounds with the model kept loaded. rtagx's
    own writes never start a round; moves reuse the cache, deleted files are forgotten, an edited
    vocabulary or config file is reloaded, a folder that disappears is caught up when it comes back.
    SIGTERM or Ctrl-C finishes the round in flight, prints the summary and exits 0.

    \b
    rtagx watch ~/Pictures --print-service systemd > ~/.config/systemd/user/rtagx-watch.service
    systemctl --user daemon-reload && systemctl --user enable --now rtagx-watch
    """
    import datetime
    import signal

    from rtagx.cli.render import json_line, summary_lines
    from rtagx.run import watch as watch_mod
    from rtagx.settings import default_config_path, load_settings, where

    if not paths:
        raise click.UsageError("give at least one PATH (a folder to watch)")
    if print_service:
        command = watch_mod.service_command(sys.argv[0], sys.argv[1:], paths, sys.executable)
        env = watch_mod.service_environment(os.environ)
        click.echo(watch_mod.service_file(print_service, command, os.getcwd(), env), nl=False)
        return
    overrides = _overrides(**options)
    if exclude:
        overrides["exclude"] = exclude
    settings = load_settings(overrides, config_path=ctx.config)
    if settings.extra_models and not ctx.quiet:
        further = ", ".join(name for name, _ in settings.extra_models)
        click.echo(
            f"rtagx: watch runs one model, {settings.model} (the first of {where(settings, 'model')}); "
            f"the others ({further}) run with `rtagx tag`",
            err=True,
        )
    _confirm_first_write(settings, paths, dry_run, yes)
    config_path = ctx.config or Path(os.environ.get("RTAGX_CONFIG") or default_config_path())
    renderer = Renderer(ctx, as_json=as_json, as_csv=as_csv, list_files=dry_run)
    renderer.progress_enabled = False  # a long-running log: one line per round, no bars

    def on_round(r: Any) -> None:
        if as_json:
            at = datetime.datetime.fromtimestamp(r.started_at).isoformat(timespec="seconds")
            if r.kind == "forget":
                click.echo(json_line({"forgot": r.files, "at": at}))
                return
            record = {k: v for k, v in r.summary.as_json().items() if k != "summary"}
            click.echo(json_line({"round": r.number, "kind": r.kind, "files": r.files, "at": at, **record}))
        elif not as_csv and not ctx.quiet:
            click.echo(_round_line(r))

    watcher = watch_mod.Watcher(
        list(paths),
        lambda: load_settings(overrides, config_path=ctx.config),
        options=watch_mod.WatchOptions(settle=settle, poll=poll, dry_run=dry_run),
        events=renderer.events,
        on_round=on_round,
        config_path=config_path,
    )

    def on_signal(signum: int, frame: Any) -> None:
        # The first signal ends the watcher after the round in flight; a catch-up over whole folders
        # (or a second signal) is interrupted like `tag` on Ctrl-C: every finished batch is kept.
        catching_up = watcher.in_round and watcher.round_kind != "new"
        again = watcher.stopping
        watcher.stop()
        if again or catching_up:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if not ctx.quiet and not as_json and not as_csv:
        how = f"polling every {poll:g} s" if poll else "file-system events"
        click.echo(
            f"rtagx: watching {', '.join(str(p) for p in paths)} ({how}, settle {settle:g} s); "
            "Ctrl-C or SIGTERM stops after the round in flight",
            err=True,
        )
    try:
        result = watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        renderer.close()
    total = result.total
    if as_json:
        click.echo(json_line({**total.as_json(), "rounds": result.rounds, "forgotten": result.forgotten}))
    elif not as_csv:
        for line in summary_lines(total):
            click.echo(line)
        click.echo(f"{result.rounds} rounds, {result.forgotten} deleted files forgotten")
    sys.exit(EXIT_OK)


# Every option of `tag` (one source: its own parameter list), then the watcher's own; the watcher
# runs one model (its --model and --pretrained are not repeatable).
_SINGLE_MODEL = {p.name: p for p in getattr(model_options(lambda: None), "__click_params__", [])}
watch_cmd.params[1:1] = [_SINGLE_MODEL.get(p.name or "", p) for p in tag.params if not isinstance(p, click.Argument)]


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--port", default=0, type=click.IntRange(0, 65535), help="Port on 127.0.0.1. [default: a free one]")
@click.option("--no-browser", is_flag=True, help="Print the address; do not open a browser.")
@click.option("--tags", "-t", default=None, help="Vocabulary to review with. [default: the one PATHS were tagged with]")
@click.option("--threshold", type=float, default=None, help="Threshold to review at. [default: as tagged]")
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]")
@verbosity_options
@click.pass_obj
@handle_errors
def review(ctx: Context, paths: tuple[Path, ...], port: int, no_browser: bool, **options: Any) -> None:
    """Look at the tags on photos in the browser and accept or reject them (a local web app).

    Serves on 127.0.0.1 only, with a random token in the address it prints. With no PATHS, every
    folder `tag` has processed. Needs `pip install 'rtagx[review]'`.
    """
    try:
        from rtagx.review.app import ReviewServer
    except ImportError as e:
        raise UsageError(f"rtagx review needs {e.name}: pip install 'rtagx[review]'") from None
    from rtagx.review.library import ReviewLibrary
    from rtagx.run.retag import known_roots
    from rtagx.settings import load_settings

    overrides = _overrides(**options)
    roots = list(paths) or sorted(known_roots(load_settings(overrides, config_path=ctx.config)))
    if not roots:
        raise UsageError("nothing to review: no tagged folders in the cache yet (run `rtagx tag PATH` first)")
    library = ReviewLibrary(roots, overrides, config_path=ctx.config)
    server = ReviewServer(library, port)
    # the photos and their vectors load in the background: the first page is served at once
    click.echo(f"rtagx review: serving at {server.url}  (Ctrl-C stops)", err=True)
    if not no_browser:
        import webbrowser

        webbrowser.open(server.url)
    server.serve_forever()


def _calibrate_from_reviews(ctx: Context, output: Path, min_support: int, options: dict[str, Any]) -> None:
    from rtagx.analysis.analyze import write_text_atomically
    from rtagx.review.calibrate import calibrate_from_reviews

    settings = _analysis_settings(ctx, options)
    result = calibrate_from_reviews(
        settings.cache_path(), _overrides(**options), config_path=ctx.config, min_support=min_support
    )
    write_text_atomically(output, result.to_text())
    click.echo(
        f"{len(result.tags)} tags calibrated on {result.decisions} review decisions, {len(result.skipped)} kept "
        f"their threshold (fewer than {min_support} decisions, or all of one kind); wrote {output}"
    )
    for t in result.tags:
        click.echo(
            f"  {t.keyword[:32]:<32} threshold {t.previous_threshold:.4f} -> {t.threshold:.4f}   "
            f"precision {t.previous_precision:.2f} -> {t.precision:.2f}  recall {t.previous_recall:.2f} -> "
            f"{t.recall:.2f}  ({t.accepted} accepted, {t.rejected} rejected)"
        )
    for keyword, accepted, rejected in result.skipped:
        click.echo(f"  {keyword[:32]:<32} kept its threshold ({accepted} accepted, {rejected} rejected)")
