"""The commands that look after rtagx itself: the cache group (path, stats, prune), the config group
(show) and doctor."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from rtagx.cli.app import EXIT_FATAL, EXIT_OK, Context, cli, handle_errors, option_overrides
from rtagx.cli.options import verbosity_options

if TYPE_CHECKING:
    from rtagx.settings import Settings


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

    click.echo(str(load_settings(option_overrides(cache=cache), config_path=ctx.config).cache_path()))


@cache.command("stats")
@click.option("--cache", default=None, help="Vector cache file (env RTAGX_CACHE).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def cache_stats(ctx: Context, cache: str | None, as_json: bool) -> None:
    """Files, models, roots and size on disk."""
    from rtagx.cache.store import open_store
    from rtagx.settings import load_settings

    settings = load_settings(option_overrides(cache=cache), config_path=ctx.config)
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

    settings = load_settings(option_overrides(cache=cache, no_wait=no_wait), config_path=ctx.config)
    counts = prune_cache(settings, keep_models, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb}: {counts['files']} missing files, {counts['vectors']} vectors, {counts['models']} models, "
        f"{counts.get('thumbnails', 0)} review thumbnails"
    )


@cli.group("config")
def config_group() -> None:
    """Show the effective settings."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@handle_errors
def config_show(ctx: Context, as_json: bool) -> None:
    """Print every setting, its value and where it came from (default, config file, env, option)."""
    from rtagx.settings import load_settings, validate_settings

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
    else:
        _print_settings(ctx, settings, values)
    # Shown first, then refused as a run would refuse it (exit 2): "threshold = 5 # env" is no setting.
    validate_settings(settings)


def _print_settings(ctx: Context, settings: Settings, values: dict[str, Any]) -> None:
    """The table of ``config show``: key, value, where it came from."""
    from rtagx.settings import config_key, default_config_path

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

    settings = load_settings(option_overrides(model=model, pretrained=pretrained), config_path=ctx.config)
    if download:  # the weights, and the tokenizer files of models with a Hugging Face tokenizer
        load_tokenizer(resolve_model(settings.model, settings.pretrained, offline=False))
    checks = run_checks(settings)
    for c in checks:
        line = f"{c.status:<5} {c.name:<12} {c.finding}"
        if c.fix:
            line += f"\n{'':<19}fix: {c.fix}"
        click.echo(line)
    sys.exit(EXIT_FATAL if any(c.status == "FAIL" for c in checks) else EXIT_OK)
