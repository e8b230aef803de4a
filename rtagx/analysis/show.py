"""``rtagx show``: the keywords in a file now, which of them rtagx owns, and the cached scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.cache.store import open_store
from rtagx.errors import FileSkip
from rtagx.keywords import metadata
from rtagx.run.common import owning_root
from rtagx.settings import Settings
from rtagx.tags import scoring
from rtagx.tags import vocab as vocab_mod


def describe_file(path: Path, settings: Settings, top: int = 10) -> dict[str, Any]:
    """What ``rtagx show`` prints: keywords now in the file, which rtagx owns, and cached scores."""
    path = Path(os.path.abspath(path))
    info: dict[str, Any] = {"path": str(path)}
    cache = settings.cache_path()
    target, style = settings.write, settings.sidecar_style
    if cache.exists() and settings.sources.get("write", "default") == "default":
        # where rtagx wrote this file's keywords last time (a root tagged with --write sidecar, say)
        with open_store(cache, readonly=True) as store:
            owner = owning_root(path, store.roots())
        if owner:
            target = owner[1].get("write") or target
            style = owner[1].get("sidecar_style") or style
    if not os.path.lexists(path):
        info["error"] = "missing: no such file"
    else:
        try:
            current = metadata.read_keywords(path, sidecar_style=style, target=target)
            info.update(
                keywords=current.keywords, owned=current.owned, hierarchical=current.hierarchical, source=current.source
            )
        except FileSkip as e:
            info["error"] = f"{e.reason}: {e.detail}"
    if not cache.exists():
        return info
    with open_store(cache, readonly=True) as store:
        rec = store.file(path)
        if rec is None:
            info["cached"] = False
            return info
        info["cached"] = True
        written = store.written([rec.path]).get(rec.path)
        if written:
            info["rtagx_chose"] = written.keywords
        owner = owning_root(path, store.roots())
        remembered = owner[1] if owner else {}
        model_key = remembered.get("model_key")
        row = (
            store.conn.execute("SELECT id, dim FROM models WHERE key = ?", (model_key,)).fetchone()
            if model_key
            else None
        )
        if row is None:
            return info
        model_id, _dim = int(row[0]), row[1]
        if rec.content_id not in store.contents_with_vectors(model_id, [rec.content_id]):
            return info
        from rtagx.settings import load_settings

        eff = load_settings(base=remembered)
        vocabulary = vocab_mod.load_vocabulary(eff.tags)
        texts = store.text_vectors(model_id, vocabulary.all_prompts())
        if len(texts) < len(set(vocabulary.all_prompts())):
            return info
        matrix = scoring.build_tag_matrix(vocabulary, texts)
        vec = store.vectors(model_id, [rec.content_id], matrix.shape[1])
        m = store.model_info(model_id)
        scores = scoring.score_images(vec, matrix, logit_scale=m.get("logit_scale"), logit_bias=m.get("logit_bias"))[0]
        order = np.argsort(-scores)[:top]
        info["model"] = m.get("name")
        info["vocabulary"] = eff.tags
        info["scores"] = [(vocabulary.tags[i].keyword, float(scores[i])) for i in order]
    return info
