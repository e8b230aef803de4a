"""Keep a resolved model and its loaded encoder for the life of a process.

A one-shot ``rtagx tag`` resolves and loads its model once and exits. ``rtagx watch`` runs ``run_tag``
again for every handful of new photos: without this, each round would hash a local checkpoint and
build the network again (seconds for ViT-B-16), which is most of a new photo's wait for its keywords.
"""

from __future__ import annotations

import os
from typing import Any

from rtagx.model.encoder import Encoder, ResolvedModel, load_encoder, resolve_model


def _signature(path: str | None) -> tuple[int, int] | None:
    """Size and mtime of a file a resolution depends on (None: no such file)."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class LoadedModels:
    """Memoises :func:`resolve_model` and :func:`load_encoder` (the same signatures).

    A resolution is reused while its config and checkpoint files keep their size and mtime. Only the
    last encoder is kept (a config reload that names another model frees the old one); a full encoder
    also serves a text-only request.
    """

    def __init__(self) -> None:
        self._resolved: dict[tuple[Any, ...], tuple[ResolvedModel, list[tuple[int, int] | None]]] = {}
        self._encoder: tuple[tuple[Any, ...], Encoder] | None = None

    def resolve(self, model: str, pretrained: str | None, *, offline: bool | None = None) -> ResolvedModel:
        key = (model, pretrained, offline, os.getcwd())
        hit = self._resolved.get(key)
        if hit is not None:
            resolved, signatures = hit
            files = (resolved.identity.config_path, resolved.identity.checkpoint_path)
            if [_signature(p) for p in files] == signatures:
                return resolved
        resolved = resolve_model(model, pretrained, offline=offline)
        files = (resolved.identity.config_path, resolved.identity.checkpoint_path)
        self._resolved[key] = (resolved, [_signature(p) for p in files])
        return resolved

    def load(self, resolved: ResolvedModel, *, text_only: bool = False, **options: Any) -> Encoder:
        key = (resolved.identity.key, tuple(sorted(options.items())))
        if self._encoder is not None and self._encoder[0] == key:
            encoder = self._encoder[1]
            if text_only or encoder.has_image_tower:
                return encoder
        self._encoder = None  # free the old network before building the next one
        encoder = load_encoder(resolved, text_only=text_only, **options)
        self._encoder = (key, encoder)
        return encoder
