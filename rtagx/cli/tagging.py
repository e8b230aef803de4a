"""The commands that put keywords on photos and take them off: tag, retag, watch, untag, and show
(what a file carries now)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from rtagx.cli.app import (
    EXIT_OK,
    EXIT_SKIPPED,
    Context,
    Renderer,
    cli,
    confirm_first_write,
    confirm_retag_writes,
    handle_errors,
    option_overrides,
)
from rtagx.cli.options import (
    engine_options,
    model_options,
    output_options,
    repeatable_model_options,
    scoring_options,
    verbosity_options,
    write_options,
)
from rtagx.settings import CHOICES


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
    overrides = option_overrides(
        model=models if several else models[0] if models else None,
        pretrained=pretrained if several and pretrained else pretrained[0] if pretrained else None,
        **options,
    )
    if exclude:
        overrides["exclude"] = exclude
    settings = load_settings(overrides, config_path=ctx.config)
    extra = list(settings.extra_models)
    confirm_first_write(settings, paths, dry_run, yes)
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

    overrides = option_overrides(**options)
    settings = load_settings(overrides, config_path=ctx.config)
    confirm_retag_writes(ctx, settings, paths, overrides, dry_run, yes)
    renderer = Renderer(ctx, as_json=as_json, as_csv=as_csv, list_files=dry_run, progress=not settings.no_progress)
    try:
        summary = run_retag(list(paths), overrides, dry_run=dry_run, events=renderer.events, config_path=ctx.config)
    finally:
        renderer.close()
    sys.exit(renderer.finish(summary))


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

    settings = load_settings(option_overrides(**options), config_path=ctx.config)
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
    from rtagx.analysis.search import text_path
    from rtagx.analysis.show import describe_file
    from rtagx.cli.render import display_path
    from rtagx.settings import load_settings

    settings = load_settings(option_overrides(cache=cache), config_path=ctx.config)
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
        if as_json:  # the name whole, bytes that are not UTF-8 as U+FFFD: valid JSON, as `tag --json`
            click.echo(json.dumps({**info, "path": text_path(info["path"])}, ensure_ascii=False, default=str))
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
    overrides = option_overrides(**options)
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
    confirm_first_write(settings, paths, dry_run, yes)
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

    # SIGHUP (the terminal or ssh session closed) stops like SIGTERM: it used to kill the watcher
    # mid-round, without its summary.
    stop_signals = [signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
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
