"""Scores for chosen images without writing anything: what ``explain``, ``eval`` and ``calibrate`` use.

Vectors come from the cache; images the cache lacks are embedded first through the normal ``tag``
pipeline in dry-run mode with ``--write none`` (so the cache learns them and no file is touched,
and the folder is not remembered as a tagged root).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtagx.cache.store import open_store
from rtagx.errors import CacheError
from rtagx.model.encoder import resolve_model
from rtagx.model.memo import remembered_identity
from rtagx.run.common import load_vocabulary_for
from rtagx.run.events import FileOutcome, RunEvents, RunSummary
from rtagx.run.tag import run_tag
from rtagx.run.tagger import scoring_options, tagger_scoring_options, tagger_vocabulary_for
from rtagx.settings import Settings
from rtagx.tags import labels as labels_mod
from rtagx.tags import scoring
from rtagx.tags import vocab as vocab_mod


@dataclass
class ScoredImages:
    """Rows of ``scores`` follow ``paths``; images that could not be embedded are in ``missing``."""

    paths: list[Path]
    scores: np.ndarray  # (images, tags): cosines, or probabilities for sigmoid models
    vocabulary: vocab_mod.Vocabulary
    options: scoring.ScoringOptions
    model_name: str
    probabilities: bool
    missing: list[Path]
    summary: RunSummary


def score_images_at(
    roots: Sequence[Path], settings: Settings, images: Sequence[Path] | None = None, events: RunEvents | None = None
) -> ScoredImages:
    """Embed what the cache lacks under ``roots`` (writing nothing), then score ``images``
    (default: every image the run saw) against the settings' vocabulary."""
    quiet = dataclasses.replace(settings, write="none")
    seen: list[Path] = []
    base_events = events or RunEvents()

    def on_file(outcome: FileOutcome) -> None:
        seen.append(Path(outcome.path))
        if base_events.on_file:
            base_events.on_file(outcome)

    tracking = dataclasses.replace(base_events, on_file=on_file)
    summary = run_tag(list(roots), quiet, dry_run=True, events=tracking)
    wanted = [Path(os.path.abspath(p)) for p in (images if images is not None else seen)]
    vocabulary = load_vocabulary_for(settings)
    with open_store(settings.cache_path(), readonly=True) as store:
        # run_tag above recorded what the model options resolve to: no second resolution (which
        # imports open_clip and hashes the checkpoint) unless that record is stale
        identity = (
            remembered_identity(store, settings.model, settings.pretrained)
            or resolve_model(settings.model, settings.pretrained, offline=True if settings.offline else None).identity
        )
        model_id = store.find_model(identity.key)
        if model_id is None:
            raise CacheError(f"no vectors of {settings.model} in the cache {store.path}")
        info = store.model_info(model_id)
        index: np.ndarray | None = None
        if info.get("kind", "clip") != "clip":  # a trained tagger: its cached vectors are probabilities
            vocabulary, index = tagger_vocabulary_for(info, vocabulary, settings)
            matrix = np.zeros((0, len(info.get("labels") or ())), np.float32)
        else:
            texts = store.text_vectors(model_id, vocabulary.all_prompts())
            matrix = scoring.build_tag_matrix(vocabulary, texts)
        records: dict[Path, int | None] = {path: store.content_of(path) for path in wanted}
        have = store.contents_with_vectors(model_id, [c for c in records.values() if c is not None])
        found: list[tuple[Path, int]] = []
        missing: list[Path] = []
        for path, cid in records.items():
            if cid is None or cid not in have:
                missing.append(path)
            else:
                found.append((path, cid))
        dim = matrix.shape[1]
        vectors = store.vectors(model_id, [c for _, c in found], dim) if found else np.zeros((0, dim), np.float32)
    if not found:
        scores = np.zeros((0, len(vocabulary.tags)))
    elif index is not None:
        scores = labels_mod.tagger_scores(vectors, index)
    else:
        scores = scoring.score_images(
            vectors, matrix, logit_scale=info.get("logit_scale"), logit_bias=info.get("logit_bias")
        )
    probabilities = (
        index is not None or info.get("logit_bias") is not None or scoring.is_probability_model(info.get("name") or "")
    )
    return ScoredImages(
        [p for p, _ in found],
        scores,
        vocabulary,
        tagger_scoring_options(settings) if index is not None else scoring_options(settings),
        info.get("name") or settings.model,
        probabilities,
        missing,
        summary,
    )


def score_labelled(
    directory: Path, labels_csv: Path | None, settings: Settings, events: RunEvents | None = None
) -> tuple[ScoredImages, list[list[int]], dict[str, int]]:
    """Scores of the labelled images under ``directory`` (labels from a CSV, else one folder per
    label), their tag indices, and the labels that match no tag (with counts)."""
    from rtagx.analysis.evaluate import load_labels_csv, load_labels_folders, match_labels
    from rtagx.errors import UsageError

    raw = load_labels_csv(labels_csv) if labels_csv else load_labels_folders(directory)
    if not raw:
        raise UsageError(f"no labelled images found ({labels_csv or directory})")
    data = {Path(os.path.abspath(p)): v for p, v in raw.items()}
    scored = score_images_at([directory], settings, images=list(data), events=events)
    truth_by_path, unknown = match_labels({p: data[p] for p in scored.paths}, scored.vocabulary)
    return scored, [truth_by_path.get(p, []) for p in scored.paths], unknown


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small text file through rtagx's one atomic replacement: never half-written."""
    from rtagx.errors import MetadataError, RtagxError
    from rtagx.keywords.atomic import atomic_write

    try:
        atomic_write(Path(path), text.encode("utf-8"))
    except MetadataError as e:
        raise RtagxError(f"cannot write {path}: {e.detail}") from None
