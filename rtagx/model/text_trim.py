"""Prompt encoding over the prompt's own length instead of the full 77-token context.

A CLIP text tower is causal: the token at position *i* attends only to positions <= *i*, and the
prompt vector is read at the end-of-text token (the highest token id, ``argmax`` pooling). The padding
after the longest prompt of a batch can therefore be cut off without changing any output: the
positions that are kept never see the ones removed. Everyday prompts ("a photo of a dog.") are 8-20
tokens, so the tower does a fifth to a quarter of the work. A cold ``rtagx tag`` encodes hundreds of
prompts before its first image (32 tags x the default templates in ``bench/throughput.py``), so this
is part of every first run's fixed cost (see README, Performance).

Only the plain layouts are handled (open_clip's ``CLIP`` and a ``TextTransformer`` without class token
or padding mask, causal mask present, argmax pooling); anything else returns None and is encoded as
before. Checked against the full-length forward in ``tests/test_encoder.py``.
"""

from __future__ import annotations

from typing import Any


def _kept_length(tokens: Any) -> int:
    return int(tokens.argmax(dim=-1).max().item()) + 1


def trimmed_text_forward(text_model: Any, tokens: Any) -> Any | None:
    """Unnormalised prompt features over the trimmed context, or None when ``text_model`` (a CLIP's
    bound ``encode_text`` or a ``TextTransformer``) is not a layout this knows to be causal."""
    owner = getattr(text_model, "__self__", text_model)  # a bound encode_text: its CLIP
    if getattr(owner, "attn_mask", None) is None or tokens.ndim != 2:
        return None
    if getattr(text_model, "__func__", None) is not None and text_model.__func__.__name__ != "encode_text":
        return None
    pool = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", None)
    if pool != "argmax" or getattr(owner, "cls_emb", None) is not None or getattr(owner, "use_pad_mask", False):
        return None
    if getattr(owner, "output_tokens", False):
        return None
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(owner, name):
            return None
    import torch

    length = min(_kept_length(tokens), tokens.shape[1])
    text = tokens[:, :length]
    cast = owner.transformer.get_cast_dtype()
    x = owner.token_embedding(text).to(cast) + owner.positional_embedding[:length].to(cast)
    x = owner.transformer(x, attn_mask=owner.attn_mask[:length, :length])
    x = owner.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    projection = getattr(owner, "text_projection", None)
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x
