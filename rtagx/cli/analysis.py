"""The commands that judge and tune the tags: explain (one image's scores), eval and calibrate
(labelled photos or review decisions), and review (accept or reject tags in the browser)."""

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
    analysis_renderer,
    analysis_settings,
    cli,
    handle_errors,
    option_overrides,
)
from rtagx.cli.options import model_options, scoring_options, verbosity_options
from rtagx.errors import UsageError


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
    from rtagx.analysis.search import text_path
    from rtagx.cli.render import display_path

    settings = analysis_settings(ctx, options)
    renderer = analysis_renderer(ctx, settings)
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
                        "path": text_path(path),  # whole (a newline too), valid UTF-8
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


def _report_unread(missing: list[Path]) -> None:
    """Name the labelled images that were left out (the reason of exit code 3), not just count them."""
    from rtagx.cli.render import display_path

    if missing:
        click.echo(
            f"rtagx: {len(missing)} labelled image{' could' if len(missing) == 1 else 's could'} not be read "
            f"(missing, or not an image rtagx can read; left out): {_listed([display_path(p) for p in missing])}",
            err=True,
        )


def _score_labelled(ctx: Context, directory: Path, labels: Path | None, options: dict[str, Any]) -> Any:
    """What eval and calibrate share: settings, progress bars, and the labelled images' scores."""
    from rtagx.analysis.analyze import score_labelled

    settings = analysis_settings(ctx, options)
    renderer = analysis_renderer(ctx, settings)
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
        _report_unread(scored.missing)  # --json lists them under "missing"
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
    _report_unread(scored.missing)
    sys.exit(EXIT_SKIPPED if scored.missing else EXIT_OK)


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

    overrides = option_overrides(**options)
    roots = list(paths)
    if not roots:
        known = sorted(known_roots(load_settings(overrides, config_path=ctx.config)))
        if not known:
            raise UsageError("nothing to review: no tagged folders in the cache yet (run `rtagx tag PATH` first)")
        # a tagged folder deleted since, or on a drive not mounted now, must not stop the review
        roots = [r for r in known if os.path.lexists(r)]
        missing = [r for r in known if r not in roots]
        if missing:
            click.echo(f"rtagx review: not on disk, left out: {_listed([str(r) for r in missing])}", err=True)
        if not roots:
            raise UsageError("nothing to review: none of the tagged folders is on disk now")
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

    settings = analysis_settings(ctx, options)
    result = calibrate_from_reviews(
        settings.cache_path(), option_overrides(**options), config_path=ctx.config, min_support=min_support
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
