"""Turn image vectors and tag vectors into chosen tags with scores.

Steps for one image (each a pure array operation, so ``retag`` over a big cache stays fast):

1. score: cosine of the image with every tag vector; for sigmoid-loss models (SigLIP) the model's
   own ``sigmoid(logit_scale * cos + logit_bias)``, a per-tag probability.
2. absolute cut: per-tag ``@threshold`` from the vocabulary, else ``--threshold``, else the file's
   ``!threshold``, else the model family's default (:data:`DEFAULT_THRESHOLDS`).
3. relative cuts (optional, independent of the raw cosine level):
   * ``margin``: keep tags within ``margin`` of the image's best tag. Helps when cosine levels move
     from image to image (drawings, screenshots and dark photos score lower on every tag): the cut
     follows the image. Harmless for multi-label vocabularies as long as the margin is not tiny.
   * ``min_share``: softmax over the whole vocabulary at ``temperature`` (CLIP's learned 0.01 by
     default), keep tags with at least this share. Helps for vocabularies of mutually exclusive
     classes (ImageNet, Places365): a tag must stand out from its competitors, not just be "high".
     Hurts multi-label vocabularies: tags that co-occur split the mass, and a large vocabulary
     makes every share small.
4. exclusive groups: only the best-scoring tag of a group may be kept (it must still pass its cuts).
5. never-list: tags on ``!never`` are scored (they can win a group, which then writes nothing) but
   never chosen.
6. ``min_tags`` tops up with the best remaining tags; ``top_k`` caps; best first.

``threshold = -1`` disables the absolute cut (every tag passes it, per-tag overrides included), so
with no relative cut set every tag is chosen except group losers and never-listed tags; ``top_k``
then caps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rtagx.errors import RtagxError
from rtagx.tags.vocab import Tag, Vocabulary

#: Default absolute thresholds by model family, first match of the substring in the lower-cased
#: model name wins. These are ESTIMATES, not measurements on a labelled set:
#: - softmax-contrastive CLIP models (OpenAI, LAION, DataComp, DFN, MetaCLIP; logit scale ~100):
#:   the CLIP paper and open_clip zero-shot runs show the matching caption of a photo at a cosine of
#:   roughly 0.25-0.35 and unrelated texts at 0.10-0.20 for ViT-B/L models; an ensemble tag vector
#:   sits a little higher. 0.25 sits at the low edge of "matching": it favours recall; raise it
#:   (or run ``rtagx calibrate``) for precision.
#: - sigmoid-loss SigLIP models: scores are probabilities sigmoid(scale*cos + bias). SigLIP's
#:   large negative bias (about -10 to -17) keeps probabilities small even for clear matches (the
#:   Hugging Face SigLIP model card's example gives about 0.3 to the right caption and near 0 to
#:   wrong ones); 0.05 is a recall-leaning guess below that.
#: None of these were measured in rtagx's test environment (no pretrained weights offline);
#: ``rtagx calibrate`` fits per-tag thresholds on your own labelled photos.
DEFAULT_THRESHOLDS: tuple[tuple[str, float], ...] = (
    ("siglip", 0.05),  # probability
    ("", 0.25),  # every other CLIP (softmax-contrastive) model: cosine
)
SELECT_ALL = -1.0
DEFAULT_TEMPERATURE = 0.01  # CLIP's learned logit scale is 100 = 1 / 0.01


@dataclass
class ScoringOptions:
    """How tags are chosen from scores (see the module docstring for the order of the steps)."""

    threshold: float | None = None  # None -> the vocabulary's !threshold, else the per-model default
    top_k: int | None = None
    min_tags: int = 0
    margin: float | None = None  # keep tags scoring >= best - margin
    min_share: float | None = None  # keep tags whose softmax share over the vocabulary >= this
    temperature: float | None = None  # softmax temperature, in cosine units (None: 0.01)


@dataclass(frozen=True)
class ChosenTag:
    tag: Tag
    score: float


def is_probability_model(model_name: str) -> bool:
    """Whether a model family scores with a sigmoid (SigLIP): its scores are probabilities."""
    return "siglip" in (model_name or "").lower()


def default_threshold(model_name: str = "", probabilities: bool | None = None) -> float:
    """The model family's default threshold (see :data:`DEFAULT_THRESHOLDS` for the sources)."""
    name = (model_name or "").lower()
    if probabilities is None:
        probabilities = is_probability_model(name)
    if probabilities:
        return DEFAULT_THRESHOLDS[0][1]
    for pattern, value in DEFAULT_THRESHOLDS[1:]:
        if pattern in name:
            return value
    return DEFAULT_THRESHOLDS[-1][1]


def build_tag_matrix(vocab: Vocabulary, text_vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """[T, D] float32: per tag, the renormalized mean of its normalized prompt vectors (CLIP paper)."""
    rows = []
    for tag in vocab.tags:
        prompts = vocab.prompts_for(tag)
        try:
            stack = np.stack([np.asarray(text_vectors[p], dtype=np.float64).reshape(-1) for p in prompts])
        except KeyError as exc:
            raise RtagxError(f"no text vector for prompt {exc.args[0]!r} of tag '{tag.keyword}'") from None
        stack /= np.maximum(np.linalg.norm(stack, axis=1, keepdims=True), 1e-12)
        mean = stack.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def score_images(
    image_vectors: np.ndarray,
    tag_matrix: np.ndarray,
    *,
    logit_scale: float | None = None,
    logit_bias: float | None = None,
) -> np.ndarray:
    """[N, T] cosines; with ``logit_bias`` (sigmoid models) ``sigmoid(logit_scale * cos + logit_bias)``.

    ``logit_scale`` is the exponentiated scale (about 100 for CLIP); it is only used with a bias,
    because a softmax model's scale does not change which cosine is higher.
    """
    images = np.asarray(image_vectors, dtype=np.float32)
    if images.ndim == 1:
        images = images[None, :]
    images = images / np.maximum(np.linalg.norm(images, axis=1, keepdims=True), 1e-12)
    cos = images @ np.asarray(tag_matrix, dtype=np.float32).T
    if logit_bias is None:
        return cos.astype(np.float32)
    if logit_scale is None:
        raise RtagxError("a sigmoid model needs its logit scale to turn cosines into probabilities")
    logits = np.float64(logit_scale) * cos.astype(np.float64) + np.float64(logit_bias)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Choosing


def global_threshold(
    vocab: Vocabulary, options: ScoringOptions, model_name: str = "", probabilities: bool | None = None
) -> tuple[float, str]:
    """The threshold for tags without their own, and where it came from (for ``explain``)."""
    if options.threshold is not None:
        return float(options.threshold), "option"
    if vocab.threshold is not None:
        return float(vocab.threshold), "vocabulary"
    return default_threshold(model_name, probabilities), "model default"


def tag_thresholds(
    vocab: Vocabulary, options: ScoringOptions, model_name: str = "", probabilities: bool | None = None
) -> np.ndarray:
    """[T] absolute threshold per tag; -inf everywhere when the threshold is -1 (select all)."""
    value, _ = global_threshold(vocab, options, model_name, probabilities)
    if options.threshold is not None and options.threshold <= SELECT_ALL:
        return np.full(len(vocab.tags), -np.inf, dtype=np.float64)
    return np.array([t.threshold if t.threshold is not None else value for t in vocab.tags], dtype=np.float64)


def softmax_shares(scores: np.ndarray, temperature: float | None = None, probabilities: bool = False) -> np.ndarray:
    """[N, T] softmax over the vocabulary. Cosines are divided by ``temperature``; probabilities
    are mapped back to the model's logits first (so 0.01 means "the model's own scale")."""
    temp = DEFAULT_TEMPERATURE if temperature is None else float(temperature)
    if temp <= 0:
        raise RtagxError(f"softmax temperature must be > 0, got {temp}")
    s = np.asarray(scores, dtype=np.float64)
    if probabilities:
        p = np.clip(s, 1e-7, 1 - 1e-7)
        z = (np.log(p) - np.log1p(-p)) * (DEFAULT_TEMPERATURE / temp)
    else:
        z = s / temp
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Cuts:
    """Boolean [N, T] masks of each rule, kept for ``explain``."""

    thresholds: np.ndarray  # [T]
    above_threshold: np.ndarray
    within_margin: np.ndarray
    enough_share: np.ndarray
    group_loser: np.ndarray
    never: np.ndarray  # [T]
    best_in_group: np.ndarray  # [N, T] int: index of the group's winner (or own index)
    shares: np.ndarray | None

    @property
    def passed(self) -> np.ndarray:
        return self.above_threshold & self.within_margin & self.enough_share & ~self.group_loser & ~self.never[None, :]


def compute_cuts(
    scores: np.ndarray,
    vocab: Vocabulary,
    options: ScoringOptions,
    *,
    model_name: str = "",
    probabilities: bool | None = None,
) -> Cuts:
    """Every rule's verdict for every (image, tag); :func:`choose_tags` and ``explain`` share it."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    n, t = s.shape
    if t != len(vocab.tags):
        raise RtagxError(f"scores have {t} columns but the vocabulary has {len(vocab.tags)} tags")
    if probabilities is None:
        probabilities = is_probability_model(model_name)
    thresholds = tag_thresholds(vocab, options, model_name, probabilities)
    above = s >= thresholds[None, :]
    within = np.ones_like(above)
    if options.margin is not None and t:
        within = s >= s.max(axis=1, keepdims=True) - float(options.margin)
    shares = None
    enough = np.ones_like(above)
    if options.min_share is not None and t:
        shares = softmax_shares(s, options.temperature, probabilities)
        enough = shares >= float(options.min_share)
    loser = np.zeros_like(above)
    best = np.tile(np.arange(t), (n, 1))
    for idx in _groups(vocab).values():
        if len(idx) < 2:
            continue
        winner = idx[np.argmax(s[:, idx], axis=1)]  # first of equal scores wins: vocabulary order
        loser[:, idx] = True
        loser[np.arange(n), winner] = False
        best[:, idx] = winner[:, None]
    never = np.array([vocab.is_never(tag.keyword) for tag in vocab.tags], dtype=bool)
    return Cuts(thresholds, above, within, enough, loser, never, best, shares)


def choose_tags(
    scores: np.ndarray,
    vocab: Vocabulary,
    options: ScoringOptions,
    *,
    model_name: str = "",
    probabilities: bool | None = None,
) -> list[list[ChosenTag]]:
    """Per image, the chosen tags best first. ``probabilities`` (None: guessed from ``model_name``)
    says whether scores are sigmoid probabilities: it picks the default threshold and the softmax."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    cuts = compute_cuts(s, vocab, options, model_name=model_name, probabilities=probabilities)
    passed = cuts.passed
    eligible = ~cuts.group_loser & ~cuts.never[None, :]
    top_k = options.top_k if options.top_k else None
    out: list[list[ChosenTag]] = []
    for row, keep, ok in zip(s, passed, eligible):
        # Sort only the tags that passed (a handful of a 1,000-tag vocabulary): same order as
        # filtering a stable sort of the whole row, at a fraction of the cost on 100k images.
        kept = np.flatnonzero(keep)
        chosen = kept[np.argsort(-row[kept], kind="stable")].tolist()
        if len(chosen) < options.min_tags:
            order = np.argsort(-row, kind="stable")
            have = set(chosen)
            extra = [int(i) for i in order if ok[i] and int(i) not in have]
            chosen = sorted(chosen + extra[: options.min_tags - len(chosen)], key=lambda i: (-row[i], i))
        if top_k is not None:
            chosen = chosen[:top_k]
        out.append([ChosenTag(vocab.tags[i], float(row[i])) for i in chosen])
    return out


def keywords_for(
    chosen: Sequence[ChosenTag], vocab: Vocabulary, *, with_ancestors: bool = False
) -> tuple[list[str], list[str]]:
    """(flat keywords for dc:subject/IPTC, "a|b|c" strings for lr:hierarchicalSubject).

    ``!rename`` applies to every level; a never-listed ancestor is neither written as a keyword
    nor kept as a level of the hierarchical string (see :func:`hierarchy_levels`). Duplicates
    (case-insensitive) are dropped.
    """
    flat: dict[str, str] = {}
    hier: dict[str, str] = {}
    for item in chosen:
        tag = item.tag
        if vocab.is_never(tag.keyword):
            continue
        levels = hierarchy_levels(tag, vocab)
        keyword = vocab.rename(tag.keyword)
        flat.setdefault(keyword.casefold(), keyword)
        if with_ancestors:
            for level in levels[:-1]:
                flat.setdefault(level.casefold(), level)
        joined = "|".join(levels)
        hier.setdefault(joined.casefold(), joined)
    return list(flat.values()), list(hier.values())


def hierarchy_levels(tag: Tag, vocab: Vocabulary) -> list[str]:
    """The levels of ``tag`` as written to ``lr:hierarchicalSubject``: renamed, never-listed levels
    left out, and a level its child repeats (case-insensitively) dropped in favour of the child:
    ``document|document`` (a tag equal to its parent, or a pair a rename or the never-list makes)
    is the node ``document`` itself, not a keyword nested under another of the same name."""
    levels = [vocab.rename(level) for level in tag.path if not vocab.is_never(level)]
    return [lv for lv, child in zip(levels, [*levels[1:], None]) if child is None or child.casefold() != lv.casefold()]


def _groups(vocab: Vocabulary) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for i, tag in enumerate(vocab.tags):
        if tag.group is not None:
            groups.setdefault(tag.group, []).append(i)
    return {k: np.array(v, dtype=np.int64) for k, v in groups.items()}
