"""``rtagx calibrate --from-reviews``: per-tag thresholds fitted on a person's review decisions.

An accepted (photo, tag) is a positive, a rejected one a negative; each tag with at least
``min_support`` decisions, of both kinds, gets the threshold that maximizes F1 on them (the same
fit as ``calibrate`` on labelled folders: :func:`rtagx.analysis.evaluate.best_f1_threshold`).
Scores are recomputed from the cached vectors with the current prompts, so the thresholds match
what the next run scores. Precision and recall on the decisions are reported before and after."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.analysis.evaluate import best_f1_threshold
from rtagx.cache.store import open_store
from rtagx.errors import CacheError, UsageError
from rtagx.run.common import load_vocabulary_for
from rtagx.run.tagger import scoring_options
from rtagx.settings import load_settings
from rtagx.tags import scoring
from rtagx.tags.vocab import Vocabulary, serialize_vocabulary


@dataclass(frozen=True)
class ReviewedTag:
    keyword: str
    accepted: int
    rejected: int
    previous_threshold: float
    threshold: float
    previous_precision: float
    previous_recall: float
    precision: float
    recall: float


@dataclass
class ReviewCalibration:
    vocabulary: Vocabulary
    tags: list[ReviewedTag]
    skipped: list[tuple[str, int, int]]  # (tag, accepted, rejected): too few decisions, or of one kind only
    decisions: int
    model_name: str

    def to_text(self) -> str:
        header = [
            f"rtagx vocabulary calibrated from review decisions on '{self.vocabulary.source}'",
            f"model: {self.model_name or 'unknown'}; {self.decisions} decisions; {len(self.tags)} tags calibrated, "
            f"{len(self.skipped)} kept their threshold.",
        ]
        return serialize_vocabulary(self.vocabulary, header=header)


def _precision_recall(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    tp = int((predicted & positive).sum())
    return (tp / int(predicted.sum()) if predicted.any() else 1.0), (
        tp / int(positive.sum()) if positive.any() else 1.0
    )


def calibrate_from_reviews(
    cache: Path, overrides: Mapping[str, Any], *, config_path: Path | None = None, min_support: int = 3
) -> ReviewCalibration:
    with open_store(cache, readonly=True) as store:
        reviews = store.all_reviews()
        if not reviews:
            raise UsageError(f"no review decisions in the cache {cache} yet: run `rtagx review` first")
        model_ids = [m for _, _, _, m, _ in reviews if m is not None]
        model_id = max(set(model_ids), key=model_ids.count) if model_ids else None
        if model_id is None:
            raise CacheError("the review decisions name no model")
        info = store.model_info(model_id)
        remembered = next((s for _, s, _ in store.roots() if s.get("model_key") == info["key"]), {})
        settings = load_settings(dict(overrides), config_path=config_path, base=remembered)
        vocab = load_vocabulary_for(settings)
        prompts = vocab.all_prompts()
        cached = store.text_vectors(model_id, prompts)
        if any(p not in cached for p in prompts):
            raise CacheError("some prompt vectors of this vocabulary are not cached: run `rtagx retag` once first")
        tag_matrix = scoring.build_tag_matrix(vocab, cached)
        mine = [r for r in reviews if r[3] in (model_id, None)]
        contents = sorted({r[0] for r in mine})
        have = store.contents_with_vectors(model_id, contents)
        contents = [c for c in contents if c in have]
        vectors = store.vectors(model_id, contents, int(tag_matrix.shape[1]))
    row = {c: n for n, c in enumerate(contents)}
    name = str(info.get("name") or "")
    probabilities = info.get("logit_bias") is not None or scoring.is_probability_model(name)
    scores = scoring.score_images(
        vectors, tag_matrix, logit_scale=info.get("logit_scale"), logit_bias=info.get("logit_bias")
    )
    current = scoring.tag_thresholds(vocab, scoring_options(settings), name, probabilities)
    by_tag: dict[str, list[tuple[int, int]]] = {}
    for cid, keyword, decision, _, _ in mine:
        if cid in row:
            by_tag.setdefault(keyword.casefold(), []).append((row[cid], decision))
    tags = list(vocab.tags)
    done: list[ReviewedTag] = []
    skipped: list[tuple[str, int, int]] = []
    for i, tag in enumerate(vocab.tags):
        decided = by_tag.get(tag.keyword.casefold(), [])
        accepted = sum(d > 0 for _, d in decided)
        rejected = len(decided) - accepted
        if not decided:
            continue
        if len(decided) < max(min_support, 1) or not accepted or not rejected:
            skipped.append((tag.keyword, accepted, rejected))
            continue
        s = np.array([scores[r, i] for r, _ in decided], dtype=np.float64)
        positive = np.array([d > 0 for _, d in decided], dtype=bool)
        threshold, _ = best_f1_threshold(s, positive)
        previous = float(current[i])
        p0, r0 = _precision_recall(s, positive, previous)
        p1, r1 = _precision_recall(s, positive, threshold)
        tags[i] = replace(tag, threshold=round(threshold, 6))
        done.append(ReviewedTag(tag.keyword, accepted, rejected, previous, round(threshold, 6), p0, r0, p1, r1))
    return ReviewCalibration(replace(vocab, tags=tags), done, skipped, len(mine), name)
