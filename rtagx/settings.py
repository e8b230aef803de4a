"""Every option in one dataclass, layered: defaults < config file < environment (RTAGX_*) < flags.

Each value remembers where it came from, so ``rtagx config show`` can say why a setting is what it
is. The config file is TOML with the same names as the command-line options (dashes or
underscores), e.g.::

    model = "ViT-B-16"
    threshold = 0.27
    write = "sidecar"
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rtagx.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def default_cache_path() -> Path:
    """The platform's user data folder (XDG_DATA_HOME on Linux): ~/.local/share/rtagx/cache.sqlite3."""
    import platformdirs

    return Path(platformdirs.user_data_dir("rtagx", appauthor=False)) / "cache.sqlite3"


def default_config_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("rtagx", appauthor=False)) / "config.toml"


@dataclass
class Settings:
    """All options of a run. Field names are the long option names with underscores."""

    cache: str = ""  # "" -> default_cache_path()
    model: str = "ViT-B-16"
    pretrained: str = "dfn2b"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 0  # 0 -> 16 on CPU, 128 on GPU
    workers: int = 0  # 0 -> from the CPU count
    threads: int = 0  # 0 -> torch's default
    tags: str = "imagenet"
    templates: str = ""  # "" -> the vocabulary's own choice
    threshold: float | None = None  # None -> the model's default
    top_k: int | None = 10
    min_tags: int = 0
    margin: float | None = None  # keep tags within this of the image's best score
    min_share: float | None = None  # keep tags with at least this softmax share of the vocabulary
    temperature: float | None = None  # softmax temperature for min_share (None: CLIP's 0.01)
    write: str = "auto"
    mode: str = "replace-own"
    sidecar_style: str = "ext"
    caption_ext: str = ".txt"
    keyword_root: str = ""
    with_ancestors: bool = False
    preserve_mtime: bool = False
    max_megapixels: float = 0.0  # 0 -> decode's default
    extensions: str = ""  # "" -> every supported format; else ".jpg,.png"
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = False
    offline: bool = False
    no_wait: bool = False
    rehash: bool = False  # hash every file's image data, whatever its size/mtime/ctime/inode say
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def cache_path(self) -> Path:
        return Path(self.cache).expanduser() if self.cache else default_cache_path()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}


#: The one list of allowed values for each option that takes a choice: the CLI builds its
#: ``click.Choice`` from it, the keyword writer and validation check against it.
CHOICES: dict[str, tuple[str, ...]] = {
    "write": ("auto", "embed", "sidecar", "txt", "none"),
    "mode": ("merge", "replace-own", "replace-all"),
    "sidecar_style": ("ext", "stem"),
}


def validate_settings(settings: Settings) -> None:
    """Option values that can be checked before anything runs."""
    if settings.threshold is not None and not -1.0 <= settings.threshold <= 1.0:
        raise UsageError(f"--threshold must be within [-1, 1] (a cosine), got {settings.threshold}")
    if settings.write not in CHOICES["write"]:
        raise UsageError(f"--write must be one of {', '.join(CHOICES['write'])}, got '{settings.write}'")
    if settings.mode not in CHOICES["mode"]:
        raise UsageError(f"--mode must be one of {', '.join(CHOICES['mode'])}, got '{settings.mode}'")
    if settings.sidecar_style not in CHOICES["sidecar_style"]:
        raise UsageError(
            f"--sidecar-style must be one of {', '.join(CHOICES['sidecar_style'])}, got '{settings.sidecar_style}'"
        )
    if settings.batch_size < 0 or settings.workers < 0 or settings.min_tags < 0 or (settings.top_k or 0) < 0:
        raise UsageError("--batch-size, --workers, --top-k and --min-tags must not be negative")
    if settings.max_megapixels < 0:
        raise UsageError("--max-megapixels must not be negative")
    if settings.margin is not None and not 0.0 <= settings.margin <= 2.0:
        raise UsageError(f"--margin must be within [0, 2] (a cosine difference), got {settings.margin}")
    if settings.min_share is not None and not 0.0 <= settings.min_share <= 1.0:
        raise UsageError(f"--min-share must be within [0, 1] (a softmax share), got {settings.min_share}")
    if settings.temperature is not None and not settings.temperature > 0:
        raise UsageError(f"--temperature must be greater than 0, got {settings.temperature}")


OPTION_NAMES = tuple(f.name for f in fields(Settings) if f.name != "sources")
_ENV_PREFIX = "RTAGX_"


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a config/env value into the field's type; a bad one is a usage error naming its origin."""
    default = getattr(Settings(), name)
    ftype = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(default, tuple):
            if isinstance(value, (list, tuple)):
                return tuple(str(v) for v in value)
            return tuple(v.strip() for v in str(value).split(",") if v.strip())
        if "float" in str(ftype):
            if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none")):
                return None if "None" in str(ftype) else 0.0
            return float(value)
        if "int" in str(ftype):
            if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none")):
                return None if "None" in str(ftype) else 0
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{origin}: bad value {value!r} for '{name.replace('_', '-')}'") from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"config file {path} cannot be read: {e}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in OPTION_NAMES:
            raise UsageError(f"config file {path}: unknown setting '{key}' (see `rtagx config show`)")
        out[name] = value
    return out


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective settings. ``base`` sits between defaults and the config file (used by
    ``retag`` to reuse the settings a root was last tagged with)."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    sources = {name: "default" for name in OPTION_NAMES}

    def apply(values: Mapping[str, Any], origin: str) -> None:
        for name, value in values.items():
            if name not in OPTION_NAMES:
                continue
            setattr(settings, name, _coerce(name, value, origin))
            sources[name] = origin

    if base:
        apply(base, "last run")
    explicit_config = config_path is not None or bool(environ.get("RTAGX_CONFIG"))
    cfg = Path(config_path or environ.get("RTAGX_CONFIG") or default_config_path()).expanduser()
    if explicit_config or cfg.is_file():
        apply(read_config_file(cfg), f"config {cfg}")
    env_values = {}
    for name in OPTION_NAMES:
        var = _ENV_PREFIX + name.upper()
        if var in environ:
            env_values[name] = environ[var]
    for name, value in env_values.items():
        apply({name: value}, f"env {_ENV_PREFIX + name.upper()}")
    if overrides:
        apply({k: v for k, v in overrides.items() if v is not None}, "option")
    settings.sources = sources
    return dataclasses.replace(settings, sources=sources)
