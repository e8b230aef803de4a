"""The commands that read the cached vectors back out, without decoding an image of the library:
search (by text or example), duplicates, and export (vectors and tags for data pipelines)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rtagx.cli.app import Context, analysis_renderer, analysis_settings, cli, handle_errors, option_overrides
from rtagx.cli.options import cached_model_options, scoring_options, verbosity_options

if TYPE_CHECKING:  # the command imports analysis only when it runs (start-up time)
    from rtagx.analysis.search import CachedModel


def _write_html(ctx: Context, target: Path, page: str) -> None:
    from rtagx.analysis.html import write_page

    write_page(target, page)
    if not ctx.quiet:
        click.echo(f"rtagx: wrote {target}", err=True)


def _note_passed_over(ctx: Context, model: CachedModel) -> None:
    """Say so when nothing named a model or a tagged folder and the newest model's vectors were taken
    while the cache holds other models' too: their folders' photos were left out (stderr; not with -q)."""
    if model.passed_over and not ctx.quiet:
        click.echo(
            f"rtagx: used the vectors of {model.name or model.key}, the newest model; the cache also holds "
            f"vectors of {', '.join(model.passed_over)} (name one with --model/--pretrained, or give a "
            "folder tagged with it)",
            err=True,
        )


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
@cached_model_options
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
    from rtagx.analysis.search import text_path
    from rtagx.cli.render import display_path, json_line

    words = [q for q in query if not os.path.isdir(os.path.expanduser(q))]
    scope = [Path(q) for q in query if os.path.isdir(os.path.expanduser(q))]
    result = run_search(words, analysis_settings(ctx, options), scope=scope, like=like, top=top, min_score=min_score)
    _note_passed_over(ctx, result.model)
    if html_file:  # first: a page that cannot be written stops the run before a script reads results
        from rtagx.analysis.html import search_page

        _write_html(ctx, html_file, search_page(result))
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
            writer.writerow([hit.rank, f"{hit.score:.4f}", text_path(hit.path)])  # CSV quotes a newline
    else:
        for hit in result.hits:
            click.echo(f"{hit.score:.4f}  {display_path(hit.path)}" if ctx.verbose else display_path(hit.path))
        if ctx.verbose:
            took = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
            click.echo(
                f"{len(result.hits)} files listed, {result.compared} cached images ranked, model {result.model.name} "
                f"({took})",
                err=True,
            )


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
@cached_model_options
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
    from rtagx.analysis.search import text_path
    from rtagx.cli.render import display_path, json_line

    result = find_duplicates(analysis_settings(ctx, options), scope=list(paths), min_score=min_score)
    _note_passed_over(ctx, result.model)
    spare = sum(len(g.members) - 1 for g in result.groups)
    if html_file:  # first: a page that cannot be written stops the run before a script reads groups
        from rtagx.analysis.html import duplicates_page

        _write_html(ctx, html_file, duplicates_page(result))
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
                    [number, int(m.keeper), f"{m.score:.4f}", m.width, m.height, m.taken, text_path(m.path)]
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
@cached_model_options
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

    overrides = option_overrides(**options)
    settings = analysis_settings(ctx, options)
    renderer = analysis_renderer(ctx, settings)
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
    _note_passed_over(ctx, result.model)
    if as_json:
        click.echo(json_line(result.as_json()))
        return
    summary = result.as_json()
    sources = ", ".join(f"{k} {n}" for k, n in summary["tags_from"].items())
    click.echo(
        f"exported {result.rows} vectors of {result.model.name or result.model.key} ({result.model.dim} x "
        f"{result.dtype}) to {result.to}: {summary['shards']} shard{'s' * (summary['shards'] != 1)}, "
        f"{result.bytes / 1e6:.1f} MB, in {result.seconds:.1f} s ({summary['rows_per_second']:.0f} rows/s); tags: {sources}"
    )
    if ctx.quiet:  # -q: errors and the summary line, as in every command
        return
    for name in result.files[:6]:
        click.echo(f"  {name}")
    if len(result.files) > 6:
        click.echo(f"  ... {len(result.files) - 6} more")
