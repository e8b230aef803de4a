"""Vocabularies for trained taggers: the model's fixed tags mapped to the keywords rtagx writes.

A tagger's "vector" is its probability vector (one entry per tag of its label file). Scoring picks
the entries the vocabulary names (:func:`tagger_scores`) and then chooses tags exactly as for CLIP
(:func:`rtagx.tags.scoring.choose_tags`: thresholds, exclusive groups, never-list, min-tags, top-k).

* Without a vocabulary (no ``--tags``): every general and character tag, keyword = the tag name with
  underscores as spaces (kaomoji such as ``^_^`` stay as they are); rating tags only with ``ratings``
  (then as one exclusive group: the most likely rating is always written). Other categories of a label
  file in the WD14 format (1 artist, 3 copyright, 5 meta in some third-party taggers) are left out,
  as the reference app reads only categories 0, 4 and 9; a vocabulary's tag line can still name them.
* With a vocabulary file (the format of :mod:`rtagx.tags.vocab`): each tag line names a model tag by
  its keyword or a synonym (underscores or spaces, any case), so ``hair|long hair`` writes the model's
  ``long_hair`` in a hierarchy; ``@threshold``, ``@group``, ``!exclusive`` work as for CLIP. A file
  with no tag lines (only ``!rename``, ``!never``, ``!threshold``) applies those to every model tag.

Default thresholds (used unless ``--threshold``, the file's ``!threshold`` or a tag's ``@threshold``
says otherwise) are the models' published recommendations: WD14 v3, SmilingWolf's wd-tagger space
defaults (general 0.35, character 0.85); JoyTag, its model card (0.4, F1 0.578 there). ``--threshold``
sets the general threshold; character tags keep theirs unless a vocabulary sets one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rtagx.errors import VocabularyError
from rtagx.tags.vocab import Tag, Vocabulary

RATING, GENERAL, CHARACTER = 9, 0, 4
CATEGORY_NAMES = {RATING: "rating", GENERAL: "general", CHARACTER: "character"}

#: The categories written by default (and by ``!tagger all``): the reference app's three.
DEFAULT_CATEGORIES = frozenset([RATING, GENERAL, CHARACTER])

#: Published default thresholds per model kind and category (see the module docstring).
DEFAULT_THRESHOLDS: dict[str, dict[int, float]] = {
    "wd14": {GENERAL: 0.35, CHARACTER: 0.85},
    "joytag": {GENERAL: 0.4},
}

#: Tags whose underscores are part of the face (the WD14 reference app keeps them).
KAOMOJI = frozenset(
    [
        "0_0",
        "(o)_(o)",
        "+_+",
        "+_-",
        "._.",
        "<o>_<o>",
        "<|>_<|>",
        "=_=",
        ">_<",
        "3_3",
        "6_9",
        ">_o",
        "@_@",
        "^_^",
        "o_o",
        "u_u",
        "x_x",
        "|_|",
        "||_||",
    ]
)


def keyword_for(name: str) -> str:
    """The default keyword of a model tag: underscores as spaces; no ``|`` or ``,`` (photo tools
    split hierarchy on ``|`` and keyword lists on commas)."""
    text = name if name in KAOMOJI else name.replace("_", " ")
    text = text.replace("|", "/").replace(",", " ")
    return " ".join(text.split()) or name


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


def category_threshold(kind: str, category: int) -> float | None:
    """A category's own threshold (None: the general one). Ratings: 0, so that with ``ratings`` the
    most likely rating is always written (their exclusive group keeps only that one), as the
    reference app reports the top rating."""
    if category == RATING:
        return 0.0
    table = DEFAULT_THRESHOLDS.get(kind, {})
    return table.get(category) if category != GENERAL else None


def tagger_vocabulary(
    labels: Sequence[str],
    categories: Sequence[int],
    user: Vocabulary | None,
    *,
    kind: str,
    ratings: bool = False,
) -> tuple[Vocabulary, np.ndarray]:
    """(the vocabulary to score with, index of each of its tags in the model's output vector)."""
    general = DEFAULT_THRESHOLDS.get(kind, {}).get(GENERAL, 0.35)
    tags: list[Tag] = []
    index: list[int] = []
    if user is not None and user.tags:
        where: dict[str, int] = {}
        for i, name in enumerate(labels):
            where.setdefault(_norm(name), i)
        unknown: list[str] = []
        for tag in user.tags:
            found = next((where[_norm(n)] for n in (tag.keyword, *tag.names) if _norm(n) in where), None)
            if found is None:
                unknown.append(tag.keyword)
                continue
            threshold = tag.threshold if tag.threshold is not None else category_threshold(kind, categories[found])
            tags.append(Tag(tag.keyword, tag.path, tag.names, (), threshold, tag.group, None))
            index.append(found)
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise VocabularyError(
                f"{user.source}: {len(unknown)} tag(s) are not among the model's {len(labels)} tags: {shown} "
                f"(name them as in the model's label file, underscores or spaces)"
            )
    if user is None or user.model_tags or not user.tags:
        named = set(index)
        for i, (name, cat) in enumerate(zip(labels, categories)):
            if i in named or cat not in DEFAULT_CATEGORIES or (cat == RATING and not ratings):
                continue
            kw = keyword_for(name)
            group = "rating" if cat == RATING else None
            tags.append(Tag(kw, (kw,), (kw,), threshold=category_threshold(kind, cat), group=group))
            index.append(i)
        tags, index = _unique(tags, index)
    threshold = user.threshold if user is not None and user.threshold is not None else general
    never: tuple[str, ...] = ()
    renames: dict[str, str] = {}
    if user is not None:
        never = tuple(dict.fromkeys([*user.never, *(keyword_for(n) for n in user.never)]))
        for old, new in user.renames.items():
            renames[old] = new
            renames.setdefault(keyword_for(old).casefold(), new)
    source = f"{kind} tags" + (f" + {user.source}" if user is not None else "")
    vocab = Vocabulary(tags, (), source, threshold=threshold, never=never, renames=renames)
    return vocab, np.asarray(index, dtype=np.int64)


def _unique(tags: list[Tag], index: list[int]) -> tuple[list[Tag], list[int]]:
    """Two model tags with the same keyword (``a_b`` and ``a b``): the first one is kept."""
    seen: set[str] = set()
    out_t: list[Tag] = []
    out_i: list[int] = []
    for t, i in zip(tags, index):
        key = t.keyword.casefold()
        if key not in seen:
            seen.add(key)
            out_t.append(t)
            out_i.append(i)
    return out_t, out_i


def tagger_scores(probabilities: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[N, T] scores of the vocabulary's tags: the model's probabilities at their indices."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim == 1:
        p = p[None, :]
    return p[:, index]


def categories_by_keyword(vocab: Vocabulary, index: np.ndarray, categories: Sequence[int]) -> dict[str, str]:
    """Each vocabulary keyword's model category name (for ``explain``)."""
    return {
        t.keyword: CATEGORY_NAMES.get(categories[int(i)], str(categories[int(i)])) for t, i in zip(vocab.tags, index)
    }
