"""Remember what ``--model``/``--pretrained`` resolved to, so a run with nothing to embed needs no model.

Resolving a model imports open_clip (with torchvision and timm: seconds) and hashes a local
checkpoint (hundreds of MB). A nightly run over an unchanged library needs neither: it only needs
the identity the cache keys vectors by. The cache keeps the last resolution of each option pair with
the size and mtime of the files it depended on; while they are unchanged the identity is reused and
the real resolution happens only if something must be encoded (and before any file is written).
"""

from __future__ import annotations

import json
import os
from typing import Any

from rtagx.cache.store import Store
from rtagx.model.encoder import ModelIdentity

_PREFIX = "resolved-model:"


def _normalize(option: str | None) -> str:
    """Relative file paths name the same model from any working folder."""
    if option and os.path.exists(os.path.expanduser(option)):
        return os.path.abspath(os.path.expanduser(option))
    return option or ""


def _signature(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _key(model: str, pretrained: str | None) -> str:
    return _PREFIX + json.dumps([_normalize(model), _normalize(pretrained)])


def remembered_identity(store: Store, model: str, pretrained: str | None) -> ModelIdentity | None:
    """The identity these options resolved to last time, if every file it depends on is unchanged."""
    value = store.meta(_key(model, pretrained))
    if value is None:
        return None
    try:
        data: dict[str, Any] = json.loads(value)
        for path, signature in data["files"]:
            if _signature(path) != signature:
                return None
        return ModelIdentity(**data["identity"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def remember_identity(store: Store, model: str, pretrained: str | None, identity: ModelIdentity) -> None:
    files = [p for p in (identity.config_path, identity.checkpoint_path) if p]
    try:
        value = json.dumps({"identity": identity.as_dict(), "files": [[p, _signature(p)] for p in files]})
    except OSError:
        return
    store.set_meta(_key(model, pretrained), value)
