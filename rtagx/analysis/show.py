"""``rtagx show``: the keywords in a file now, which of them rtagx owns, and the cached scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import WrittenRecord, open_store, path_key
from rtagx.errors import FileSkip
from rtagx.keywords import metadata
from rtagx.run.common import load_vocabulary_for, owning_root, written_place
from rtagx.run.tagger import tagger_vocabulary_for
from rtagx.settings import Settings, load_settings
from rtagx.tags import labels as labels_mod
from rtagx.tags import scoring


def describe_file(path: Path, settings: Settings, top: int = 10) -> dict[str, Any]:
    """What ``rtagx show`` prints: keywords now in the file, which rtagx owns, and cached scores.

    Keywords are read where rtagx wrote them (the target, sidecar style and caption extension the
    cache recorded, unless options say else); scores use the vocabulary and templates ``tag`` used."""
    path = Path(os.path.abspath(path))
    info: dict[str, Any] = {"path": str(path)}
    cache = settings.cache_path()
    written: WrittenRecord | None = None
    owner: tuple[Path, dict[str, Any]] | None = None
    content_id: int | None = None
    if cache.exists():
        with open_store(cache, readonly=True) as store:
            owner = owning_root(path, store.roots())
            # the content the file holds now (a copy, rename or edit since the last run included),
            # never the vector of the picture it held when it was recorded
            content_id = store.content_of(path)
            written = store.written([path_key(path)]).get(path_key(path))
    where = written_place(settings, written, owner)
    if not os.path.lexists(path):
        info["error"] = "missing: no such file"
    else:
        try:
            current = metadata.read_keywords(
                path, sidecar_style=where["sidecar_style"], target=where["write"], caption_ext=where["caption_ext"]
            )
            info.update(
                keywords=current.keywords, owned=current.owned, hierarchical=current.hierarchical, source=current.source
            )
        except FileSkip as e:
            info["error"] = f"{e.reason}: {e.detail}"
    if not cache.exists():
        return info
    if content_id is None:
        info["cached"] = False
        return info
    info["cached"] = True
    if written:
        info["rtagx_chose"] = written.keywords
    remembered = owner[1] if owner else {}
    model_key = remembered.get("model_key")
    with open_store(cache, readonly=True) as store:
        model_id = store.find_model(model_key) if model_key else None
        if model_id is None and written is not None:
            model_id = written.model_id
        if model_id is None or content_id not in store.contents_with_vectors(model_id, [content_id]):
            return info
        eff = load_settings(base=remembered)
        vocabulary = load_vocabulary_for(eff)
        m = store.model_info(model_id)
        if m.get("kind", "clip") != "clip":  # a trained tagger: the cached vector is its probabilities
            vocabulary, index = tagger_vocabulary_for(m, vocabulary, eff)
            probs = store.vectors(model_id, [content_id], len(m.get("labels") or ()))
            tagger_scores = labels_mod.tagger_scores(probs, index)[0]
            order = np.argsort(-tagger_scores, kind="stable")[:top]
            info.update(model=m.get("name"), vocabulary=vocabulary.source, templates="")
            info["scores"] = [(vocabulary.tags[i].keyword, float(tagger_scores[i])) for i in order]
            return info
        prompts = vocabulary.all_prompts()
        texts = store.text_vectors(model_id, prompts)
        if len(texts) < len(set(prompts)):
            return info
        matrix = scoring.build_tag_matrix(vocabulary, texts)
        vec = store.vectors(model_id, [content_id], matrix.shape[1])
    scores = scoring.score_images(vec, matrix, logit_scale=m.get("logit_scale"), logit_bias=m.get("logit_bias"))[0]
    order = np.argsort(-scores)[:top]
    info["model"] = m.get("name")
    info["vocabulary"] = eff.tags
    info["templates"] = eff.templates
    info["scores"] = [(vocabulary.tags[i].keyword, float(scores[i])) for i in order]
    return info
