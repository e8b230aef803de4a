"""A person's review decisions applied to the chosen tags: a rejected tag is dropped, an accepted tag
is kept (added with its score when the scoring would drop it). Pure: decisions in, chosen tags out.

Decisions are keyed by the tag's keyword (``Tag.keyword``): +1 accepted, -1 rejected. An accepted
keyword the vocabulary no longer has is ignored (rtagx only writes the vocabulary's tags)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rtagx.tags.scoring import ChosenTag
from rtagx.tags.vocab import Vocabulary

ACCEPTED = 1
REJECTED = -1


def apply_decisions(
    chosen: Sequence[ChosenTag], scores: np.ndarray, vocab: Vocabulary, decisions: Mapping[str, int]
) -> list[ChosenTag]:
    """``chosen`` (one image, best first) with ``decisions`` applied; ``scores`` is the image's row
    of tag scores (for accepted tags the scoring dropped). The result stays sorted best first."""
    if not decisions:
        return list(chosen)
    folded = {k.casefold(): d for k, d in decisions.items()}
    out = [c for c in chosen if folded.get(c.tag.keyword.casefold()) != REJECTED]
    have = {c.tag.keyword.casefold() for c in out}
    for i, tag in enumerate(vocab.tags):
        key = tag.keyword.casefold()
        if folded.get(key) == ACCEPTED and key not in have:
            out.append(ChosenTag(tag, float(scores[i])))
            have.add(key)
    out.sort(key=lambda c: -c.score)
    return out
