"""Tools that show a user why tags were chosen and how good they are: explain, eval, calibrate.

Library functions only (the CLI renders them): each takes scores that
:func:`rtagx.tags.scoring.score_images` computed from cached vectors, so no image is decoded here.

- :func:`explain_scores` / :func:`explain`: one image's top tags, each with the threshold it met or
  missed and every other rule's verdict.
- :func:`load_labels_csv`, :func:`load_labels_folders`: labelled samples (``path,label[;label]`` CSV,
  or an ImageNet-style one-folder-per-tag tree); :func:`match_labels` maps labels to tags.
- :func:`evaluate`: top-1/top-5 accuracy for single-label data and precision/recall/F1 per tag and
  overall, at the current scoring settings.
- :func:`calibrate`: per-tag thresholds that maximize F1 on the sample, written back in the
  vocabulary format (:meth:`Calibration.to_text`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rtagx.errors import UsageError
from rtagx.imaging.formats import SUPPORTED_EXTENSIONS
from rtagx.tags import scoring
from rtagx.tags.scoring import ScoringOptions
from rtagx.tags.vocab import Tag, Vocabulary, serialize_vocabulary

# ---------------------------------------------------------------------------------------------
# explain


@dataclass(frozen=True)
class TagVerdict:
    """One tag's score for one image and what each rule said about it."""

    tag: Tag
    rank: int  # 1 = the image's best tag
    score: float
    threshold: float  # the absolute threshold that applied (-inf when -1 selects every tag)
    threshold_source: str  # "tag" (vocabulary @threshold), "option", "vocabulary", "model default", "select all"
    passed_threshold: bool
    passed_margin: bool | None  # None when no margin is set
    share: float | None  # softmax share over the vocabulary (None when min_share is not set)
    passed_share: bool | None
    group: str | None
    group_winner: str | None  # keyword of the group's best tag when this tag lost to it
    never: bool
    chosen: bool
    reason: str  # one short human sentence: why it was or was not chosen

    @property
    def keyword(self) -> str:
        return self.tag.keyword


@dataclass(frozen=True)
class Explanation:
    verdicts: list[TagVerdict]  # the top tags by score, best first
    chosen: list[str]  # keywords chosen, best first (what would be written, before renames)
    global_threshold: float
    threshold_source: str
    best_score: float
    probabilities: bool  # scores are sigmoid probabilities (SigLIP), not cosines


def explain(
    image_vector: np.ndarray,
    tag_matrix: np.ndarray,
    vocab: Vocabulary,
    options: ScoringOptions,
    *,
    model_name: str = "",
    logit_scale: float | None = None,
    logit_bias: float | None = None,
    top: int = 20,
) -> Explanation:
    """Explain the choice for one image vector (see :func:`explain_scores`)."""
    scores = scoring.score_images(
        np.asarray(image_vector)[None, :] if np.ndim(image_vector) == 1 else image_vector,
        tag_matrix,
        logit_scale=logit_scale,
        logit_bias=logit_bias,
    )[0]
    probabilities = logit_bias is not None or scoring.is_probability_model(model_name)
    return explain_scores(scores, vocab, options, model_name=model_name, probabilities=probabilities, top=top)


def explain_scores(
    scores: np.ndarray,
    vocab: Vocabulary,
    options: ScoringOptions,
    *,
    model_name: str = "",
    probabilities: bool | None = None,
    top: int = 20,
) -> Explanation:
    """The ``top`` best-scoring tags of one image (plus any chosen tag below them), with verdicts."""
    row = np.asarray(scores, dtype=np.float64).reshape(1, -1)
    if probabilities is None:
        probabilities = scoring.is_probability_model(model_name)
    cuts = scoring.compute_cuts(row, vocab, options, model_name=model_name, probabilities=probabilities)
    chosen = scoring.choose_tags(row, vocab, options, model_name=model_name, probabilities=probabilities)[0]
    chosen_idx = {id(c.tag): n for n, c in enumerate(chosen)}
    glob, source = scoring.global_threshold(vocab, options, model_name, probabilities)
    select_all = options.threshold is not None and options.threshold <= scoring.SELECT_ALL
    order = [int(i) for i in np.argsort(-row[0], kind="stable")]
    shown = order[: max(top, 0)]
    shown += [i for i in order[len(shown) :] if id(vocab.tags[i]) in chosen_idx]
    verdicts = []
    for i in shown:
        tag = vocab.tags[i]
        thr = float(cuts.thresholds[i])
        src = "select all" if select_all else ("tag" if tag.threshold is not None else source)
        margin_ok = bool(cuts.within_margin[0, i]) if options.margin is not None else None
        share = float(cuts.shares[0, i]) if cuts.shares is not None else None
        share_ok = bool(cuts.enough_share[0, i]) if options.min_share is not None else None
        winner = vocab.tags[int(cuts.best_in_group[0, i])].keyword if cuts.group_loser[0, i] else None
        verdict = TagVerdict(
            tag=tag,
            rank=order.index(i) + 1,
            score=float(row[0, i]),
            threshold=thr,
            threshold_source=src,
            passed_threshold=bool(cuts.above_threshold[0, i]),
            passed_margin=margin_ok,
            share=share,
            passed_share=share_ok,
            group=tag.group,
            group_winner=winner,
            never=bool(cuts.never[i]),
            chosen=id(tag) in chosen_idx,
            reason="",
        )
        verdicts.append(replace(verdict, reason=_reason(verdict, bool(cuts.passed[0, i]), options)))
    best = float(row.max()) if row.size else float("nan")
    return Explanation(
        verdicts,
        [c.tag.keyword for c in chosen],
        glob,
        "select all" if select_all else source,
        best,
        bool(probabilities),
    )


def _reason(v: TagVerdict, passed: bool, options: ScoringOptions) -> str:
    if v.never:
        return "on the never-write list"
    if v.group_winner is not None:
        return f"lost to '{v.group_winner}' in exclusive group '{v.group}'"
    if v.chosen and not passed:
        return f"added to reach min_tags={options.min_tags}"
    if v.chosen:
        if v.threshold_source == "select all":
            return "chosen: threshold -1 selects every tag"
        return f"chosen: {v.score:.4f} >= {v.threshold:.4f} ({v.threshold_source})"
    if not v.passed_threshold:
        return f"below threshold {v.threshold:.4f} ({v.threshold_source})"
    if v.passed_margin is False:
        return f"more than margin {options.margin} below the image's best tag"
    if v.passed_share is False:
        return f"softmax share {v.share:.4f} below min_share {options.min_share}"
    return f"passed, but cut by top_k={options.top_k}"


# ---------------------------------------------------------------------------------------------
# labelled samples


def load_labels_csv(path: str | Path) -> dict[Path, list[str]]:
    """``path,label[;label...]`` rows (more label columns are allowed too; a ``path,...`` header as
    the first row that is not a comment is skipped). Relative image paths are taken relative to the
    CSV's folder; every path is made absolute (``..`` resolved as text, as eval looks photos up), so
    one photo named two ways is one entry with the labels of both rows."""
    csv_path = Path(path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{csv_path}: cannot read labels: {exc}") from None
    out: dict[Path, list[str]] = {}
    first = True
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        header, first = first and row[0].strip().lower() in ("path", "file", "filename", "image"), False
        if header:
            continue
        labels = [lab.strip() for cell in row[1:] for lab in cell.split(";") if lab.strip()]
        if not row[0].strip() or not labels:
            raise UsageError(f"{csv_path}:{lineno}: expected 'path,label[;label...]'")
        image = Path(row[0].strip()).expanduser()
        if not image.is_absolute():
            image = csv_path.parent / image
        image = Path(os.path.abspath(image))
        out.setdefault(image, [])
        out[image].extend(lab for lab in labels if lab not in out[image])
    if not out:
        raise UsageError(f"{csv_path}: no labelled rows")
    return out


def load_labels_folders(root: str | Path, extensions: frozenset[str] | None = None) -> dict[Path, list[str]]:
    """ImageNet-style layout: ``root/<label>/<image>`` (images in sub-folders of a label folder count
    for that label). The folder name is the label; underscores read as spaces when matching."""
    base = Path(root)
    if not base.is_dir():
        raise UsageError(f"{base}: not a folder of label folders")
    wanted = frozenset(SUPPORTED_EXTENSIONS) if extensions is None else extensions
    out: dict[Path, list[str]] = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in sorted(folder.rglob("*")):
            if image.is_file() and image.suffix.lower() in wanted and not image.name.startswith("."):
                out.setdefault(image, []).append(folder.name)
    if not out:
        raise UsageError(f"{base}: no images in label folders")
    return out


def match_labels(
    labels: Mapping[Path, Sequence[str]], vocab: Vocabulary
) -> tuple[dict[Path, list[int]], dict[str, int]]:
    """Tag indices per image, and the labels that match no tag (with their counts).

    A label matches a tag's keyword, path ("a|b|c") or synonym, case-insensitively; "golden_retriever"
    also matches "golden retriever".
    """
    index = {id(t): i for i, t in enumerate(vocab.tags)}
    out: dict[Path, list[int]] = {}
    unknown: dict[str, int] = {}
    for image, labs in labels.items():
        found: list[int] = []
        for lab in labs:
            tag = vocab.lookup(lab) or vocab.lookup(lab.replace("_", " "))
            if tag is None:
                unknown[lab] = unknown.get(lab, 0) + 1
            elif index[id(tag)] not in found:
                found.append(index[id(tag)])
        out[image] = found
    return out, unknown


def truth_matrix(truth: Sequence[Sequence[int]], n_tags: int) -> np.ndarray:
    """[N, T] bool from per-image tag index lists."""
    m = np.zeros((len(truth), n_tags), dtype=bool)
    for row, idx in enumerate(truth):
        m[row, list(idx)] = True
    return m


# ---------------------------------------------------------------------------------------------
# eval


@dataclass(frozen=True)
class TagStats:
    keyword: str
    support: int  # images labelled with the tag
    predicted: int  # images the tag was chosen for
    tp: int
    precision: float
    recall: float
    f1: float


@dataclass
class EvalReport:
    images: int
    single_label: bool  # every image has exactly one label
    top1: float | None  # single-label data only: best raw score is the label
    top5: float | None
    precision: float  # micro-averaged over all (image, tag) decisions at the current settings
    recall: float
    f1: float
    macro_f1: float  # mean F1 over tags with support
    per_tag: list[TagStats] = field(default_factory=list)  # tags with support or predictions
    unknown_labels: dict[str, int] = field(default_factory=dict)


def _prf(tp: int, predicted: int, support: int) -> tuple[float, float, float]:
    p = tp / predicted if predicted else 0.0
    r = tp / support if support else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def evaluate(
    scores: np.ndarray,
    truth: Sequence[Sequence[int]],
    vocab: Vocabulary,
    options: ScoringOptions,
    *,
    model_name: str = "",
    probabilities: bool | None = None,
    unknown_labels: Mapping[str, int] | None = None,
) -> EvalReport:
    """Accuracy of the current settings on labelled images (rows of ``scores`` match ``truth``)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(truth) or s.shape[1] != len(vocab.tags):
        raise UsageError(f"scores {s.shape} do not match {len(truth)} labelled images x {len(vocab.tags)} tags")
    n, t = s.shape
    gold = truth_matrix(truth, t)
    single = n > 0 and all(len(x) == 1 for x in truth)
    top1 = top5 = None
    if single:
        order = np.argsort(-s, axis=1, kind="stable")[:, :5]
        labels = np.array([x[0] for x in truth])
        top1 = float(np.mean(order[:, 0] == labels))
        top5 = float(np.mean((order == labels[:, None]).any(axis=1)))
    chosen = scoring.choose_tags(s, vocab, options, model_name=model_name, probabilities=probabilities)
    index = {id(tag): i for i, tag in enumerate(vocab.tags)}
    pred = np.zeros_like(gold)
    for row, picks in enumerate(chosen):
        for c in picks:
            pred[row, index[id(c.tag)]] = True
    tp_per = (pred & gold).sum(axis=0)
    pred_per, sup_per = pred.sum(axis=0), gold.sum(axis=0)
    per_tag = []
    for i in np.flatnonzero((sup_per > 0) | (pred_per > 0)):
        p, r, f = _prf(int(tp_per[i]), int(pred_per[i]), int(sup_per[i]))
        per_tag.append(TagStats(vocab.tags[i].keyword, int(sup_per[i]), int(pred_per[i]), int(tp_per[i]), p, r, f))
    p, r, f = _prf(int(tp_per.sum()), int(pred_per.sum()), int(sup_per.sum()))
    with_support = [x.f1 for x in per_tag if x.support > 0]
    return EvalReport(
        n,
        single,
        top1,
        top5,
        p,
        r,
        f,
        float(np.mean(with_support)) if with_support else 0.0,
        per_tag,
        dict(unknown_labels or {}),
    )


# ---------------------------------------------------------------------------------------------
# calibrate


@dataclass(frozen=True)
class CalibratedTag:
    keyword: str
    threshold: float
    support: int
    f1: float  # on the sample, at the new threshold (this tag alone: top_k and groups ignored)
    previous_threshold: float
    previous_f1: float
    tags_every_image: bool = False  # the best F1 came from keeping every labelled image: worth a look


@dataclass
class Calibration:
    vocabulary: Vocabulary  # the input vocabulary with @threshold set on calibrated tags
    tags: list[CalibratedTag]
    skipped: list[str]  # tags with fewer positives than min_support: threshold unchanged
    images: int
    model_name: str = ""

    def to_text(self) -> str:
        """The calibrated vocabulary as a file (every tag, thresholds included)."""
        header = [
            f"rtagx vocabulary calibrated from '{self.vocabulary.source}'",
            f"model: {self.model_name or 'unknown'}; {self.images} labelled images; "
            f"{len(self.tags)} tags calibrated, {len(self.skipped)} kept their threshold (too few examples).",
            "Per-tag @threshold values maximize F1 on that sample; they are specific to this model.",
        ]
        return serialize_vocabulary(self.vocabulary, header=header)


def best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximizing F1 of ``scores >= threshold`` against ``positives``.

    The threshold is placed halfway between the lowest kept score and the next lower one, so small
    shifts of the scores do not flip the sample's decisions. Ties prefer the higher threshold.
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    total = int(pos.sum())
    if total == 0 or s.size == 0:
        return float("nan"), 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    tp = np.cumsum(pos_sorted)
    k = np.arange(1, s.size + 1)
    f1 = 2 * tp / (k + total)
    boundary = np.append(s_sorted[:-1] > s_sorted[1:], True)  # a cut can only fall between distinct scores
    f1 = np.where(boundary, f1, -1.0)
    best = int(np.argmax(f1))  # first maximum = fewest predictions = highest threshold
    below = s_sorted[best + 1] if best + 1 < s.size else s_sorted[best] - 0.01
    threshold = float((s_sorted[best] + below) / 2)
    return float(np.clip(threshold, -1.0, 1.0)), float(f1[best])


def _short_decimal(value: float, slack: float, decimals: int) -> float:
    """The shortest decimal (at least ``decimals`` places) within ``slack`` of ``value``."""
    for places in range(decimals, 10):
        rounded = round(value, places)
        if abs(rounded - value) <= slack:
            return rounded
    return value


def calibrate(
    scores: np.ndarray,
    truth: Sequence[Sequence[int]],
    vocab: Vocabulary,
    *,
    min_support: int = 3,
    options: ScoringOptions | None = None,
    model_name: str = "",
    probabilities: bool | None = None,
    decimals: int = 4,
) -> Calibration:
    """Per-tag thresholds that maximize F1 on the labelled sample.

    Each tag is fitted alone (``score >= threshold`` against its labels), before top_k, min_tags,
    relative cuts and exclusive groups: ``eval --top-k 0`` on the same sample reproduces its F1.
    Tags with fewer than ``min_support`` positive images keep their threshold. A threshold sits
    midway between the two neighbouring sample scores, so decode noise (1e-3) cannot flip a
    decision; it is shortened to ``decimals`` only where that keeps it in the middle half of that gap.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(truth) or s.shape[1] != len(vocab.tags):
        raise UsageError(f"scores {s.shape} do not match {len(truth)} labelled images x {len(vocab.tags)} tags")
    gold = truth_matrix(truth, s.shape[1])
    current = scoring.tag_thresholds(vocab, options or ScoringOptions(), model_name, probabilities)
    tags = list(vocab.tags)
    done: list[CalibratedTag] = []
    skipped: list[str] = []
    for i, tag in enumerate(vocab.tags):
        support = int(gold[:, i].sum())
        if support < max(min_support, 1):
            skipped.append(tag.keyword)
            continue
        thr, f1 = best_f1_threshold(s[:, i], gold[:, i])
        kept, dropped = s[:, i][s[:, i] >= thr], s[:, i][s[:, i] < thr]
        upper = float(kept.min())
        lower = float(dropped.max()) if dropped.size else upper - 0.01
        thr = _short_decimal(thr, (upper - lower) / 4, decimals)
        prev = float(current[i])
        prev_pred = s[:, i] >= prev
        _, _, prev_f1 = _prf(int((prev_pred & gold[:, i]).sum()), int(prev_pred.sum()), support)
        fitted = max(thr, -1.0)
        tags[i] = replace(tag, threshold=fitted)
        done.append(CalibratedTag(tag.keyword, fitted, support, f1, prev, prev_f1, not dropped.size))
    return Calibration(replace(vocab, tags=tags), done, skipped, int(s.shape[0]), model_name)
