"""The click options several commands share (model, scoring, writing, output, engine, verbosity),
each group built from the one list of choices in rtagx.settings, so one option reads the same in
every command's --help."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from rtagx.cli.app import Context, set_logging
from rtagx.settings import CHOICES, DEFAULT_MAX_MEGAPIXELS


def _verbosity(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        obj = ctx.find_object(Context)
        if obj is None or not value:
            return
        if attr == "verbose":
            obj.verbose += int(value)
            set_logging(obj.verbose)
        else:
            setattr(obj, attr, True)

    return callback


def _stacked(fn: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Apply a group of click options to a command, the first listed shown first in its --help."""
    for option in reversed(options):
        fn = option(fn)
    return fn


def verbosity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-q/-v/--debug work after the command name too: `rtagx tag -v DIR` as well as `rtagx -v tag DIR`."""
    return _stacked(
        fn,
        [
            click.option(
                "--quiet",
                "-q",
                is_flag=True,
                expose_value=False,
                callback=_verbosity("quiet"),
                help="Only errors, skipped files with their reason, and the summary; no progress bars.",
            ),
            click.option(
                "--verbose",
                "-v",
                count=True,
                expose_value=False,
                callback=_verbosity("verbose"),
                help="List every file with its tags or skip reason (-vv: debug log).",
            ),
            click.option(
                "--debug",
                is_flag=True,
                expose_value=False,
                callback=_verbosity("debug"),
                help="Show tracebacks for errors.",
            ),
        ],
    )


MODEL_HELP = "open_clip model name, or path to an open_clip model config JSON; or a trained tagger: wd-vit-tagger-v3 (wd-swinv2-, wd-convnext-, wd-eva02-large-tagger-v3), joytag, hf-hub:OWNER/REPO, or a folder with its files."
PRETRAINED_HELP = "open_clip pretrained tag, or path to a local checkpoint file."


def model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _model_options(fn, repeatable=False)


def repeatable_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``tag``'s model options: --model (and --pretrained) may be given several times."""
    return _model_options(fn, repeatable=True)


def _model_options(fn: Callable[..., Any], *, repeatable: bool) -> Callable[..., Any]:
    more = " Repeat it to tag with several models at once: their keywords are united." if repeatable else ""
    more_p = " Repeatable: the Nth --pretrained goes with the Nth --model." if repeatable else ""
    return _stacked(
        fn,
        [
            click.option(
                "--model",
                "-m",
                default=None,
                multiple=repeatable,
                help=f"{MODEL_HELP}{more} [default: ViT-B-16]",
            ),
            click.option(
                "--pretrained",
                "-p",
                default=None,
                multiple=repeatable,
                help=f"{PRETRAINED_HELP}{more_p} [default: dfn2b]",
            ),
            click.option(
                "--device",
                type=click.Choice(CHOICES["device"]),
                default=None,
                help="Where to run the model; auto picks cuda, then mps, then cpu. [default: auto]",
            ),
            click.option(
                "--precision",
                type=click.Choice(CHOICES["precision"]),
                default=None,
                help="Inference precision. auto: fp16 autocast on GPUs; on the CPU bf16 weights where the CPU has bf16 instructions (AVX512-BF16/AMX; 2-4x fp32, cosine >= 0.9999), else fp32. int8: opt-in dynamic int8 image tower on the CPU (faster than fp32, cosine >= 0.99, a few tags change). [default: auto]",
            ),
            click.option(
                "--cpu-backend",
                type=click.Choice(CHOICES["cpu_backend"]),
                default=None,
                help="What runs the image tower on the CPU. auto: OpenVINO bf16 where it is installed (rtagx[openvino]) and the CPU has bf16 instructions (1.1-1.3x eager bf16 on 2 quiet cores, more under load, cosine to fp32 >= 0.9999), else eager torch. compile: torch.compile (needs a C++ compiler). A backend is prepared in the background while eager encodes the first batches; one that is missing or fails falls back to eager. [default: auto]",
            ),
            click.option(
                "--batch-size",
                type=click.IntRange(min=0),
                default=None,
                help="Images per encoder batch (0: 16 on CPU, 128 on GPU).",
            ),
            click.option(
                "--workers", type=click.IntRange(min=0), default=None, help="Decode threads (0: from the CPU count)."
            ),
            click.option(
                "--threads",
                type=click.IntRange(min=0),
                default=None,
                help="Torch CPU threads (0: torch's default, one per core).",
            ),
            click.option(
                "--max-megapixels",
                type=click.FloatRange(min=0),
                default=None,
                help="Skip images larger than this (decompression-bomb guard; 0: no limit). "
                f"[default: {DEFAULT_MAX_MEGAPIXELS:g}]",
            ),
            click.option("--offline", is_flag=True, default=None, help="Never try to download model weights."),
        ],
    )


def scoring_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--tags",
                "-t",
                default=None,
                help="Vocabulary: a file, or a shipped name (imagenet, coco, places365, openimages, photos). [default: imagenet]",
            ),
            click.option(
                "--templates",
                default=None,
                help="Prompt template ensemble: a name (default, imagenet80) overriding the vocabulary's choice.",
            ),
            click.option(
                "--threshold",
                type=click.FloatRange(-1, 1),
                default=None,
                help="Keep tags scoring at least this, in [-1, 1]: a cosine for CLIP models, a probability for SigLIP models (-1 keeps every tag). [default: per model: 0.25 cosine, 0.05 SigLIP]",
            ),
            click.option(
                "--top-k",
                type=click.IntRange(min=0),
                default=None,
                help="At most this many tags per image (0: no cap). [default: 10]",
            ),
            click.option(
                "--min-tags",
                type=click.IntRange(min=0),
                default=None,
                help="At least this many tags per image, best first, even below the threshold.",
            ),
            click.option(
                "--margin",
                type=click.FloatRange(0, 2),
                default=None,
                help="Relative cut: keep only tags scoring within this of the image's best tag (e.g. 0.05).",
            ),
            click.option(
                "--min-share",
                type=click.FloatRange(0, 1),
                default=None,
                help="Relative cut: keep only tags with at least this softmax share of the vocabulary (e.g. 0.02); for vocabularies of exclusive classes.",
            ),
            click.option(
                "--temperature",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Softmax temperature for --min-share, in cosine units. [default: 0.01, CLIP's own]",
            ),
            click.option(
                "--ratings",
                is_flag=True,
                default=None,
                help="Trained taggers (WD14): also write the model's most likely rating tag (general, sensitive, ...).",
            ),
        ],
    )


def write_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--write",
                "write",
                type=click.Choice(CHOICES["write"]),
                default=None,
                help="Where keywords go: auto embeds into JPEG/TIFF/PNG/WebP and uses XMP sidecars for RAW/HEIC/others. [default: auto]",
            ),
            click.option(
                "--mode",
                type=click.Choice(CHOICES["mode"]),
                default=None,
                help="merge only adds; replace-own replaces rtagx's earlier keywords; replace-all replaces every keyword. [default: replace-own]",
            ),
            click.option(
                "--sidecar-style",
                type=click.Choice(CHOICES["sidecar_style"]),
                default=None,
                help="Sidecar name: IMG.CR2.xmp (ext) or IMG.xmp (stem). [default: ext]",
            ),
            click.option("--caption-ext", default=None, help="Extension of --write txt caption files. [default: .txt]"),
            click.option(
                "--keyword-root",
                default=None,
                help="Put rtagx's keywords under this parent in the keyword hierarchy (e.g. auto).",
            ),
            click.option(
                "--with-ancestors",
                is_flag=True,
                default=None,
                help="Also write each tag's ancestors (animal, dog for animal|dog|beagle) as keywords.",
            ),
            click.option(
                "--preserve-mtime",
                is_flag=True,
                default=None,
                help="Keep files' modification times after writing keywords.",
            ),
            click.option(
                "--dry-run",
                "-n",
                is_flag=True,
                help="Show what would change; write nothing (the cache still learns new vectors).",
            ),
            click.option(
                "--yes", "-y", is_flag=True, help="Do not ask before the first write into a folder's original files."
            ),
        ],
    )


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    return _stacked(
        fn,
        [
            click.option(
                "--json", "as_json", is_flag=True, help="Print JSON lines: one object per file, then a summary object."
            ),
            click.option("--csv", "as_csv", is_flag=True, help="Print path,tag,score,action CSV rows."),
            click.option(
                "--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]"
            ),
            click.option(
                "--no-wait",
                is_flag=True,
                default=None,
                help="Exit with code 4 instead of waiting when another rtagx holds the cache.",
            ),
        ],
    )


def engine_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where images are embedded: this process, or a Ray cluster (README: "More than one machine")."""
    return _stacked(
        fn,
        [
            click.option(
                "--engine",
                type=click.Choice(CHOICES["engine"]),
                default=None,
                help="Where images are embedded: local (this process) or ray (a Ray cluster; pip install 'rtagx[ray]'). Scanning, the cache and keyword writing stay here. [default: local]",
            ),
            click.option(
                "--ray-address",
                default=None,
                help="The Ray cluster: auto (the one this machine belongs to), HOST:PORT, or ray://HOST:PORT (Ray Client). [default: RAY_ADDRESS, else the Ray running here, else a new one on this machine]",
            ),
            click.option(
                "--ray-actors",
                type=click.IntRange(min=0),
                default=None,
                help="Encoder actors, each loading the model once (0: one per GPU; without GPUs one per node, at most half the CPUs).",
            ),
            click.option(
                "--ray-gpus-per-actor",
                type=click.FloatRange(min=0),
                default=None,
                help="GPUs each encoder actor reserves (0.5: two actors share a GPU). [default: 1 when the cluster has GPUs, else 0]",
            ),
            click.option(
                "--ray-ship-bytes",
                is_flag=True,
                default=None,
                help="Read each file on the driver's node and ship its bytes to the workers, for photos not on storage every node mounts at the same path.",
            ),
        ],
    )


def cached_model_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Which cached vectors to use."""
    return _stacked(
        fn,
        [
            click.option(
                "--model",
                "-m",
                default=None,
                help="Use the vectors of this model (name or config path). [default: the model that tagged PATHS, else the newest in the cache]",
            ),
            click.option("--pretrained", "-p", default=None, help="Weights of --model (tag or checkpoint path)."),
            click.option(
                "--cache", default=None, help="Vector cache file (env RTAGX_CACHE). [default: in the user data folder]"
            ),
        ],
    )
