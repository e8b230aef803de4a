"""Every option in one dataclass, layered: defaults < config file < environment (RTAGX_*) < flags.

Each value remembers where it came from, so ``rtagx config show`` can say why a setting is what it
is. The config file is TOML with the same names as the command-line options (dashes or
underscores; ``ext`` and ``hidden`` as in ``--ext`` and ``--hidden``), a few settings have no option
(``decode-timeout``, ``cpu-bf16``, ``no-progress``), and the environment variable of each is its key
in capitals (``RTAGX_TOP_K``), e.g.::

    model = "ViT-B-16"
    threshold = 0.27
    write = "sidecar"
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
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


#: The decompression-bomb guard (``--max-megapixels``), the one source of its default: larger images
#: are skipped as ``too-large`` before decoding. 200 MP admits every current camera (the biggest
#: phone sensors are 200 MP, medium format 150 MP) and stops decompression bombs.
DEFAULT_MAX_MEGAPIXELS = 200.0


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
    cpu_backend: str = "auto"  # the image tower's CPU backend: auto, eager, compile, openvino
    tags: str = "imagenet"
    templates: str = ""  # "" -> the vocabulary's own choice
    threshold: float | None = None  # None -> the model's default
    top_k: int | None = 10
    min_tags: int = 0
    margin: float | None = None  # keep tags within this of the image's best score
    min_share: float | None = None  # keep tags with at least this softmax share of the vocabulary
    temperature: float | None = None  # softmax temperature for min_share (None: CLIP's 0.01)
    ratings: bool = False  # trained taggers: also write the model's rating tag (WD14 general/sensitive/...)
    write: str = "auto"
    mode: str = "replace-own"
    sidecar_style: str = "ext"
    caption_ext: str = ".txt"
    keyword_root: str = ""
    with_ancestors: bool = False
    preserve_mtime: bool = False
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS  # 0: no limit
    extensions: str = ""  # "" -> every supported format; else ".jpg,.png"
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = False
    offline: bool = False
    no_wait: bool = False
    rehash: bool = False  # hash every file's image data, whatever its size/mtime/ctime/inode say
    # Where images are embedded (run/ray_engine.py): this process, or a Ray cluster.
    engine: str = "local"
    ray_address: str = ""  # "": RAY_ADDRESS, else the Ray running on this machine, else start one here
    ray_actors: int = 0  # encoder actors; 0: one per GPU, or one per node (at most CPUs / 2) without GPUs
    ray_gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    ray_ship_bytes: bool = False  # the driver's node reads each file and ships its bytes to the workers
    # Settings without a command-line option (config file or RTAGX_* only):
    decode_timeout: float = 120.0  # seconds one image may take to decode before it is skipped
    cpu_bf16: bool | None = None  # does this CPU multiply bf16 in hardware? None: detect
    no_progress: bool = False  # never draw progress bars, even on a terminal
    # Further models of a run, after ``model``: (name, pretrained) pairs from a list given as
    # ``model = [...]`` in the config file or as several --model; not a key of its own.
    extra_models: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def cache_path(self) -> Path:
        return Path(self.cache).expanduser() if self.cache else default_cache_path()

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_OPTIONS}

    def models(self) -> list[tuple[str, str]]:
        """Every model of a run, first ``model`` then the further ones, as (name, pretrained)."""
        return [(self.model, self.pretrained), *self.extra_models]


#: The one list of allowed values for each option that takes a choice: the CLI builds its
#: ``click.Choice`` from it, the keyword writer, the encoder and validation check against it.
CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda", "mps"),
    "precision": ("auto", "fp32", "fp16", "bf16", "int8"),
    "write": ("auto", "embed", "sidecar", "txt", "none"),
    "mode": ("merge", "replace-own", "replace-all"),
    "sidecar_style": ("ext", "stem"),
    "engine": ("local", "ray"),
    "cpu_backend": ("auto", "eager", "compile", "openvino"),
}

#: Config keys that are spelled like the command-line option rather than the field (``--ext``,
#: ``--hidden``): the README promises that config keys are the long option names.
OPTION_ALIASES: dict[str, str] = {"ext": "extensions", "hidden": "include_hidden"}

#: Each field's range check: (is the value fine, what a valid value is).
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "threshold": (lambda v: v is None or -1.0 <= v <= 1.0, "a cosine or probability within [-1, 1]"),
    "batch_size": (lambda v: v >= 0, "a whole number >= 0"),
    "workers": (lambda v: v >= 0, "a whole number >= 0"),
    "threads": (lambda v: v >= 0, "a whole number >= 0"),
    "top_k": (lambda v: v is None or v >= 0, "a whole number >= 0"),
    "min_tags": (lambda v: v >= 0, "a whole number >= 0"),
    "max_megapixels": (lambda v: v >= 0, "a number >= 0"),
    "margin": (lambda v: v is None or 0.0 <= v <= 2.0, "a cosine difference within [0, 2]"),
    "min_share": (lambda v: v is None or 0.0 <= v <= 1.0, "a softmax share within [0, 1]"),
    "temperature": (lambda v: v is None or v > 0, "a number > 0"),
    "decode_timeout": (lambda v: v > 0, "a number of seconds > 0"),
    "ray_actors": (lambda v: v >= 0, "a whole number >= 0"),
    "ray_gpus_per_actor": (lambda v: v is None or v >= 0, "a number of GPUs >= 0 (fractions share a GPU)"),
}


def where(settings: Settings, name: str) -> str:
    """Where a setting's value came from, in the words a person can act on: the option, the
    environment variable, or the key in the config file."""
    origin = settings.sources.get(name, "option")
    return origin_label(name, origin)


def origin_label(name: str, origin: str) -> str:
    """``--top-k``, ``RTAGX_TOP_K``, ``'top-k' in config file PATH`` or the folder's last run."""
    if origin.startswith("env "):
        return origin[4:]
    if origin.startswith("config "):
        return f"'{config_key(name)}' in config file {origin[7:]}"
    if origin == "last run":
        return f"'{config_key(name)}' remembered from the folder's last run"
    return "--" + config_key(name)


def validate_settings(settings: Settings) -> None:
    """Option values that can be checked before anything runs; the message names where the bad
    value came from (option, variable or config file) and what a valid value is."""
    for name, allowed in CHOICES.items():
        value = getattr(settings, name)
        if value not in allowed:
            raise UsageError(f"{where(settings, name)}: bad value '{value}' (choose from {', '.join(allowed)})")
    for name, (fine, expected) in _RANGES.items():
        value = getattr(settings, name)
        if not fine(value):
            raise UsageError(f"{where(settings, name)}: bad value {value!r} (expected {expected})")


_NOT_OPTIONS = ("sources", "extra_models")
OPTION_NAMES = tuple(f.name for f in fields(Settings) if f.name not in _NOT_OPTIONS)

#: Settings that take a list of models (a run with several): ``model`` and ``pretrained``.
LIST_OF_MODELS = ("model", "pretrained")
_ENV_PREFIX = "RTAGX_"


def env_name(name: str) -> str:
    """The environment variable of a setting, its config key in capitals: ``top_k`` -> ``RTAGX_TOP_K``,
    ``extensions`` -> ``RTAGX_EXT``."""
    return _ENV_PREFIX + config_key(name).upper().replace("-", "_")


def config_key(name: str) -> str:
    """The config-file key of a setting, as the README shows it: the long option name."""
    aliases = {field: key for key, field in OPTION_ALIASES.items()}
    return aliases.get(name, name.replace("_", "-"))


def _expected(name: str) -> str:
    """What a valid value of a field looks like, for error messages."""
    if name in CHOICES:
        return "one of " + ", ".join(CHOICES[name])
    ftype = str({f.name: f.type for f in fields(Settings)}[name])
    if "bool" in ftype:
        return "true or false" + (" (or auto)" if "None" in ftype else "")
    if "float" in ftype:
        return "a number" + (" (or auto)" if "None" in ftype else "")
    if "int" in ftype:
        return "a whole number" + (" (or auto)" if "None" in ftype else "")
    if "tuple" in ftype:
        return "a list of text"
    return "text"


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a config/env value into the field's type; a bad one is a usage error naming its origin
    (the variable, or the key and the file) and what a valid value is."""
    default = getattr(Settings(), name)
    ftype = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if "bool" in str(ftype):
            if isinstance(value, bool):
                return value
            if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
                if "None" in str(ftype):
                    return None
                raise ValueError(value)
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or (isinstance(value, (dict, list)) and not isinstance(default, tuple)):
            raise TypeError(value)
        if origin.startswith("config ") and isinstance(default, (str, tuple)):
            # TOML has types: ``tags = 5`` or ``exclude = [1]`` is a slip, not the text "5" (an
            # environment variable is always text and is read as such)
            entries = value if isinstance(value, list) and isinstance(default, tuple) else [value]
            if not all(isinstance(v, str) for v in entries):
                raise TypeError(value)
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
        raise UsageError(f"{origin_label(name, origin)}: bad value {value!r} (expected {_expected(name)})") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The config file's settings by field name. A UTF-8 byte-order mark (Windows Notepad writes one)
    is dropped: TOML forbids it, and tomllib's "Invalid statement (at line 1, column 1)" names no cause."""
    try:
        with open(path, "rb") as f:
            data = tomllib.loads(f.read().decode("utf-8").removeprefix("\ufeff"))
    except FileNotFoundError:
        raise UsageError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"config file {path} cannot be read: {e}") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = OPTION_ALIASES.get(key.replace("_", "-"), key.replace("-", "_"))
        if name not in OPTION_NAMES:
            raise UsageError(f"config file {path}: unknown setting '{key}' (`rtagx config show` lists the keys)")
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
    # ``model`` / ``pretrained`` given as lists (config file, several --model): the layer that set
    # each last decides; a single value from a later layer (an option) ends the list.
    lists: dict[str, list[str]] = {}

    def apply(values: Mapping[str, Any], origin: str) -> None:
        for name, value in values.items():
            if name not in OPTION_NAMES:
                continue
            if name in LIST_OF_MODELS:
                lists.pop(name, None)
                if isinstance(value, (list, tuple)):
                    lists[name] = _model_list(name, value, origin)
                    value = lists[name][0]
            setattr(settings, name, _coerce(name, value, origin))
            sources[name] = origin

    if base:
        apply(base, "last run")
    explicit_config = config_path is not None or bool(environ.get("RTAGX_CONFIG"))
    cfg = Path(config_path or environ.get("RTAGX_CONFIG") or default_config_path()).expanduser()
    if explicit_config or cfg.exists():  # a folder where the config file belongs is an error, not "none"
        apply(read_config_file(cfg), f"config {cfg}")
    env_values = {}
    for name in OPTION_NAMES:
        var = env_name(name)
        if var in environ:
            env_values[name] = environ[var]
    for name, value in env_values.items():
        apply({name: value}, f"env {env_name(name)}")
    if overrides:
        apply({k: v for k, v in overrides.items() if v is not None}, "option")
    settings.sources = sources
    return dataclasses.replace(settings, sources=sources, extra_models=_extra_models(settings, lists))


def _model_list(name: str, value: list[Any] | tuple[Any, ...], origin: str) -> list[str]:
    """A list of models (or of their weights): text entries, at least one model. A bad entry is a
    usage error naming the key and the file (or the option) and the entry."""
    if name == "model" and not value:
        raise UsageError(f"{origin_label(name, origin)}: an empty list (name at least one model)")
    out = []
    for n, entry in enumerate(value, start=1):
        if not isinstance(entry, str) or (name == "model" and not entry.strip()):
            raise UsageError(
                f"{origin_label(name, origin)}: bad entry {n} of the list, {entry!r} "
                f"(expected {'a model name' if name == 'model' else 'the weights of the model at the same place'})"
            )
        out.append(entry.strip())
    return out


def _extra_models(settings: Settings, lists: dict[str, list[str]]) -> tuple[tuple[str, str], ...]:
    """The models after the first, each with the weights at the same place of the ``pretrained``
    list (the default weights where that list is shorter or not given); a model named twice once."""
    models = lists.get("model", [])
    weights = lists.get("pretrained", [])
    if len(weights) > max(1, len(models)):
        where_ = origin_label("pretrained", settings.sources.get("pretrained", "option"))
        raise UsageError(f"{where_}: more weights ({len(weights)}) than models ({len(models) or 1}) in the list")
    chosen = [(settings.model, settings.pretrained)]
    for n, name in enumerate(models[1:], start=1):
        pair = (name, weights[n] if n < len(weights) else Settings.pretrained)
        if pair not in chosen:
            chosen.append(pair)
    return tuple(chosen[1:])
