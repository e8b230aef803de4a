"""Health checks behind ``rtagx doctor``: each returns a status (OK, WARN, FAIL), a finding and a fix."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rtagx.settings import Settings, validate_settings


@dataclass(frozen=True)
class Check:
    status: str  # OK | WARN | FAIL
    name: str
    finding: str
    fix: str = ""


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "installed"))


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check(
        "OK" if ok else "FAIL",
        "python",
        f"{platform.python_version()} at {sys.executable}",
        "" if ok else "rtagx needs Python 3.10 or newer",
    )


def check_torch(settings: Settings) -> list[Check]:
    version = _version("torch")
    if version is None:
        return [Check("FAIL", "torch", "not importable", "pip install torch")]
    from rtagx.errors import RtagxError
    from rtagx.model.encoder import resolve_device, resolve_precision

    out = [Check("OK", "torch", version)]
    try:
        device = resolve_device(settings.device)
        precision = resolve_precision(settings.precision, device, cpu_bf16=settings.cpu_bf16)
        threads = __import__("torch").get_num_threads()
        out.append(
            Check(
                "OK",
                "device",
                f"{device} ({precision}; {threads} CPU threads)",
                "" if device != "cpu" else "no GPU found: CPU works, a CUDA or Apple GPU is much faster",
            )
        )
    except RtagxError as e:
        out.append(Check("FAIL", "device", str(e), "use --device auto"))
    return out


def check_model(settings: Settings) -> Check:
    from rtagx.errors import RtagxError
    from rtagx.model.encoder import resolve_model

    version = _version("open_clip")
    if version is None:
        return Check("FAIL", "model", "open_clip is not importable", "pip install open_clip_torch")
    try:
        resolved = resolve_model(settings.model, settings.pretrained, offline=True)
    except RtagxError as e:
        return Check(
            "FAIL",
            "model",
            f"open_clip {version}: {e}",
            "on a connected machine run `rtagx doctor --download`, or pass --pretrained /path/to/checkpoint",
        )
    identity = resolved.identity
    if identity.kind != "clip":  # a trained tagger: fixed tags, no prompts
        runtime = "onnxruntime" if identity.kind == "wd14" else "torch"
        have = _version(runtime)
        detail = (
            f"{identity.name}: {identity.kind} tagger with fixed outputs ({len(identity.labels)} tags), "
            f"weights at {resolved.checkpoint_file}; runs on {runtime} {have or '(not installed)'}"
        )
        return Check("OK" if have else "FAIL", "model", detail, "" if have else "pip install 'rtagx[taggers]'")
    return Check(
        "OK",
        "model",
        f"{identity.name} / {settings.pretrained}: embedding + zero-shot (CLIP), weights at {resolved.checkpoint_file}",
    )


def check_metadata() -> list[Check]:
    out = []
    v = _version("pyexiv2")
    out.append(Check("OK" if v else "FAIL", "pyexiv2", v or "not importable", "" if v else "pip install pyexiv2"))
    exiftool = shutil.which("exiftool")
    if exiftool:
        ver = subprocess.run([exiftool, "-ver"], capture_output=True, text=True).stdout.strip()
        out.append(Check("OK", "exiftool", f"{ver} at {exiftool} (optional: an independent reader to check keywords)"))
    else:
        out.append(
            Check(
                "WARN",
                "exiftool",
                "not found (optional)",
                "apt install libimage-exiftool-perl, or brew install exiftool",
            )
        )
    return out


def check_extras() -> list[Check]:
    out = []
    for module, extra, what in (
        ("pillow_heif", "heif", "HEIC/HEIF/AVIF"),
        ("rawpy", "raw", "RAW files"),
        ("transformers", "siglip", "Hugging Face tokenizers (SigLIP models)"),
        ("pillow_jxl", "jxl", "JPEG XL"),
    ):
        v = _version(module)
        out.append(
            Check(
                "OK" if v else "WARN",
                f"extra {extra}",
                f"{what}: {v}" if v else f"{what}: not installed",
                "" if v else f"pip install 'rtagx[{extra}]'",
            )
        )
    return out


def check_cache(settings: Settings) -> Check:
    """The cache a run would use: a readable rtagx cache (not a folder, another file, or one from a
    newer rtagx: every run stops on those) that this user may write, or a folder it can be made in."""
    from rtagx.cache.store import check_cache_file
    from rtagx.errors import RtagxError

    path = settings.cache_path()
    if os.path.lexists(path):
        try:
            check_cache_file(path)
        except RtagxError as e:
            return Check("FAIL", "cache", str(e), "move it away, or pass --cache PATH or set RTAGX_CACHE")
        size = sum(p.stat().st_size for p in (path, Path(str(path) + "-wal")) if p.exists())
        writable = os.access(path, os.W_OK)
        return Check(
            "OK" if writable else "FAIL",
            "cache",
            f"{path} ({size / 1e6:.1f} MB)",
            "" if writable else "make it writable or pass --cache",
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    writable = os.access(parent, os.W_OK)
    return Check(
        "OK" if writable else "FAIL",
        "cache",
        f"{path} (not created yet)",
        "" if writable else f"{parent} is not writable: pass --cache PATH or set RTAGX_CACHE",
    )


def check_settings(settings: Settings) -> Check:
    """The option values from the config file and RTAGX_* variables: one out of range (``RTAGX_WRITE=
    bogus``) stops every run with exit 2, so doctor says so instead of passing."""
    from rtagx.errors import RtagxError

    try:
        validate_settings(settings)
    except RtagxError as e:
        return Check("FAIL", "settings", str(e), "fix the value (`rtagx config show` says where each comes from)")
    return Check("OK", "settings", "every value in range (`rtagx config show` lists them)")


def run_checks(settings: Settings) -> list[Check]:
    return [
        check_python(),
        check_settings(settings),
        *check_torch(settings),
        check_model(settings),
        *check_metadata(),
        *check_extras(),
        check_cache(settings),
    ]
