"""Load a CLIP model from open_clip and turn images and texts into normalized vectors.

Model choice is split in two steps so that a run can fail before it touches any file:

* :func:`resolve_model` works out *which* model is meant (an open_clip name or a config JSON file;
  a pretrained tag or a checkpoint file), where its weights are on disk, and the identity the
  vector cache keys vectors by. It never builds the network and never waits on the network when
  offline, so a missing download is reported in a second, not after minutes of retries.
* :func:`load_encoder` builds the network from a resolved model, on the chosen device and precision.
  ``text_only=True`` builds only the text tower, which is all ``retag`` needs.

CPU backends (``--cpu-backend``, :func:`resolve_cpu_backend`): the image tower runs in eager torch
until a faster copy is ready, prepared in a background thread from the first batch on, so a run with
few images never waits for it; a backend that is missing or fails falls back to eager with a note
(``Encoder.backend_note``), never an error. Measured on 2 cores of an Intel Xeon with AMX, random-weight
ViT-B-16, interleaved with eager bf16 in one run (bench/cpu_options.py --backends; the machine was
shared, load average 1-12): OpenVINO bf16 1.47-2.12x the eager bf16 rate (1.55x at load 1-2.7; 1.21x on an idle machine); with one
stream per core (``_streamed``) 1.12x an eager tower that keeps its activation memory (2026-12-02,
:func:`keep_activation_memory`; those earlier figures were taken without it); torch.compile (inductor,
frozen weights) 0.93-1.06x at 130-160 s of compile per process, on-disk caches or not, so opt-in only.
OpenVINO's compiled model is kept on disk: the first conversion (40-100 s there) is made only in a job
of >= ``BACKEND_MIN_IMAGES`` images, later runs import it in 0.3-10 s.

The cache keys vectors by model, not by backend. That is sound because every backend's vectors lie
within cosine 0.9999 of the fp32 ones on the camera samples (min: eager bf16 0.999949, OpenVINO bf16
0.999949, compile bf16 0.999976, OpenVINO fp32 1.000000), so two backends' vectors mix as safely as
two bf16 runs' do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtagx.errors import ModelError, UsageError
from rtagx.model.text_trim import trimmed_text_forward
from rtagx.settings import CHOICES

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16"
# Best published ImageNet-1k zero-shot top-1 among open_clip's ViT-B-16 weights: Apple's DFN-2B
# (76.2%; datacomp_xl_s13b_b90k 73.5%, laion2b_s34b_b88k 70.2%, openai 68.3%).
DEFAULT_PRETRAINED = "dfn2b"
DEVICES = CHOICES["device"]
PRECISIONS = CHOICES["precision"]
CPU_BACKENDS = CHOICES["cpu_backend"]
#: Images a job must have for a CPU backend that is not on disk yet to be prepared (converted or
#: compiled) during it; a tower kept by an earlier run is loaded for any job.
BACKEND_MIN_IMAGES = 500
#: A TORCHINDUCTOR_CACHE_DIR the user set before rtagx ran (read now: torch writes its default there
#: on first use, after which the variable no longer says whether a person chose it).
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


@dataclass(frozen=True)
class ModelIdentity:
    """What the cache keys vectors by: two identities with the same ``key`` give the same vectors."""

    key: str
    name: str  # open_clip model name, or the config file's stem
    pretrained: str  # tag, or checkpoint file path
    config_path: str | None = None
    checkpoint_path: str | None = None
    checkpoint_hash: str | None = None
    image_size: int = 224
    # Trained taggers (rtagx.model.taggers): their kind, tag names and WD14 categories. "clip" has none.
    kind: str = "clip"
    labels: tuple[str, ...] = ()
    categories: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # from JSON (the cache's memo) lists come back: keep it hashable
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "categories", tuple(self.categories))

    def as_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.kind != "clip":
            extra = {"kind": self.kind, "labels": list(self.labels), "categories": list(self.categories)}
        return extra | {
            "key": self.key,
            "name": self.name,
            "pretrained": self.pretrained,
            "config_path": self.config_path,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_hash": self.checkpoint_hash,
            "image_size": self.image_size,
        }


@dataclass
class ResolvedModel:
    """A model we know how to build: its open_clip name, weights file and construction options."""

    identity: ModelIdentity
    open_clip_name: str
    model_cfg: dict[str, Any]
    checkpoint_file: str
    force_quick_gelu: bool = False
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)


def is_offline() -> bool:
    """True when downloads must not be tried: asked for, or no route to the model hub."""
    for var in ("RTAGX_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return True
    return False


def looks_like_path(text: str) -> bool:
    """Is a --model / --pretrained value a file path (as resolution takes it), not a name or tag?"""
    return os.sep in text or "/" in text or text.endswith(".json") or text.endswith(CHECKPOINT_SUFFIXES)


def digest_file(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash of a checkpoint or config file (same bytes, same identity, wherever it lives)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _register_config(config_path: Path) -> tuple[str, dict[str, Any]]:
    import open_clip

    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model config {config_path} cannot be read: {e}") from None
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ModelError(f"model config {config_path} is not an open_clip model config (needs vision_cfg and text_cfg)")
    open_clip.add_model_config(config_path)
    return config_path.stem, cfg


def _image_size(model_cfg: dict[str, Any]) -> int:
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _cached_hub_file(repo_id: str, filename: str) -> str | None:
    """The weights file if it is already in the Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import _get_safe_alternatives

    for candidate in [*_get_safe_alternatives(filename), filename]:
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _weights_help(name: str, tag: str, where: str) -> str:
    return (
        f"weights for model {name} (pretrained '{tag}') are not on this machine and cannot be downloaded{where}: "
        f"run `rtagx doctor --download` once on a connected machine (then copy ~/.cache/huggingface here), "
        f"or pass a checkpoint file with --pretrained /path/to/open_clip_pytorch_model.bin"
    )


def _fetch_tag_weights(name: str, tag: str, tag_cfg: dict[str, Any], offline: bool) -> str:
    """Path of the weights for an open_clip pretrained tag: cache first, then a download if allowed."""
    hub = tag_cfg.get("hf_hub") or ""
    if hub:
        repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        from open_clip.pretrained import HF_WEIGHTS_NAME

        filename = filename or HF_WEIGHTS_NAME
        found = _cached_hub_file(repo_id, filename)
        if found:
            return found
        if offline:
            raise ModelError(_weights_help(name, tag, f" (offline; looked for {repo_id} in the Hugging Face cache)"))
        from open_clip.pretrained import download_pretrained_from_hf

        try:
            return download_pretrained_from_hf(repo_id, filename=filename)
        except Exception as e:  # network errors come in many types
            raise ModelError(_weights_help(name, tag, f" ({type(e).__name__})")) from None
    url = tag_cfg.get("url") or ""
    if url:
        cache = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cache.is_file():
            return str(cache)
        if offline:
            raise ModelError(_weights_help(name, tag, " (offline)"))
        from open_clip.pretrained import download_pretrained_from_url

        try:
            return download_pretrained_from_url(url)
        except Exception as e:
            raise ModelError(_weights_help(name, tag, f" ({type(e).__name__})")) from None
    raise ModelError(f"pretrained tag '{tag}' of model {name} has no download location")


def resolve_model(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    *,
    offline: bool | None = None,
    digest: Callable[[Path], str] = digest_file,
) -> ResolvedModel:
    """Work out which model is meant and where its weights are, without building it.

    Raises :class:`ModelError` with a one-line, actionable message for an unknown name, a missing
    config or checkpoint file, an unknown tag, or weights that are neither cached nor downloadable.
    """
    from rtagx.model import taggers

    source = taggers.tagger_source(model)
    if source is not None:  # a trained tagger (WD14 / JoyTag): --pretrained does not apply
        return taggers.resolve_tagger(source, model, offline=offline, digest=digest)

    import open_clip

    config_path: Path | None = None
    if model.endswith(".json") or (looks_like_path(model) and not model.startswith(("hf-hub:", "local-dir:"))):
        config_path = Path(model).expanduser().resolve()
        if not config_path.is_file():
            raise ModelError(f"model config file not found: {model}")
        name, model_cfg = _register_config(config_path)
        config_id = f"config:{digest(config_path)}"
    else:
        name = model
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L")))[:300]
            raise ModelError(f"unknown model '{model}': not an open_clip model name or config file (e.g. {known}, ...)")
        config_id = name

    if not pretrained:
        raise ModelError(f"model {name} needs weights: pass --pretrained TAG or --pretrained /path/to/checkpoint")

    pre_overrides: dict[str, Any] = {}
    quick_gelu = False
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if config_path is None else {}
    if tag_cfg:
        if offline is None:
            offline = is_offline()
        checkpoint = _fetch_tag_weights(name, pretrained, tag_cfg, offline)
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        pre_overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        weights_id = pretrained
        checkpoint_path = None
        checkpoint_hash = None
    else:
        candidate = Path(pretrained).expanduser()
        if not candidate.is_file():
            if looks_like_path(pretrained):
                raise ModelError(f"checkpoint file not found: {pretrained}")
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ModelError(
                f"unknown pretrained tag '{pretrained}' for model {name} (known tags: {tags}); "
                f"or pass a checkpoint file path"
            )
        checkpoint = str(candidate.resolve())
        checkpoint_path = checkpoint
        checkpoint_hash = digest(Path(checkpoint))
        weights_id = f"sha:{checkpoint_hash}"

    image_size = _image_size(model_cfg)
    identity = ModelIdentity(
        key=f"{config_id}|{weights_id}|{image_size}",
        name=name,
        pretrained=pretrained,
        config_path=str(config_path) if config_path else None,
        checkpoint_path=checkpoint_path,
        checkpoint_hash=checkpoint_hash,
        image_size=image_size,
    )
    return ResolvedModel(identity, name, model_cfg, checkpoint, quick_gelu, pre_overrides)


def resolve_device(device: str = "auto") -> str:
    """auto picks cuda, then mps, then cpu; an explicit device that is not there is a usage error."""
    import torch

    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}' (choose from {', '.join(DEVICES)})")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU (try --device auto)")
    if device == "mps" and not mps:
        raise UsageError("--device mps was asked for, but Apple MPS is not available (try --device auto)")
    return device


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16).

    Without it oneDNN emulates bf16 and a bf16 model is slower than fp32, so ``auto`` stays fp32.
    The ``cpu_bf16`` setting (``RTAGX_CPU_BF16=0/1``, ``cpu-bf16`` in the config file) overrides this
    detection: see :func:`resolve_precision`.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str, *, cpu_bf16: bool | None = None) -> str:
    """What ``auto`` means here, and what each choice becomes on this device.

    * GPUs: ``auto`` is fp16 autocast (fidelity >= 0.999 against fp32).
    * CPU: ``auto`` is bf16 *weights* (the whole model cast to bfloat16, not autocast) when the CPU
      has bf16 instructions (``cpu_bf16``; detected by :func:`cpu_has_native_bf16` when None): about
      2-4x the fp32 rate with cosine >= 0.9999 to the fp32 vectors (bench/cpu_options.py); exact fp32
      otherwise. ``fp16`` on the CPU means bf16 (fp16 matmuls on CPU are slow or missing).
    * ``int8`` (CPU only, opt-in): dynamic int8 quantization of the image tower's linear layers;
      cosine >= 0.99 to fp32, a few tag decisions change.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    if precision == "auto":
        if device in ("cuda", "mps"):
            return "fp16"
        if cpu_bf16 is None:
            cpu_bf16 = cpu_has_native_bf16()
        return "bf16" if cpu_bf16 else "fp32"
    if precision == "fp16" and device == "cpu":
        return "bf16"  # CPU autocast supports bf16; fp16 matmuls on CPU are slow or missing
    if precision == "int8" and device != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU only (device is {device}); use fp16 on GPUs")
    return precision


def openvino_available() -> bool:
    """True when the optional OpenVINO runtime (``pip install 'rtagx[openvino]'``) can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def resolve_cpu_backend(backend: str, device: str, precision: str) -> tuple[str, str]:
    """(the backend the image tower will use, a note saying why when it is not what was asked).

    ``auto`` is OpenVINO where it is installed and the model runs in bf16 on the CPU (measured 1.2-2x
    eager bf16 at the same fidelity); eager everywhere else: fp32 and int8 keep torch (OpenVINO fp32
    is not measured to be faster on CPUs without bf16), and GPUs ignore the setting. ``compile`` and
    ``openvino`` are taken as asked, except on GPUs and with int8 (a quantized tower is torch-only).
    """
    if backend not in CPU_BACKENDS:
        raise UsageError(f"unknown CPU backend '{backend}' (choose from {', '.join(CPU_BACKENDS)})")
    if device != "cpu":
        return "eager", "" if backend in ("auto", "eager") else f"--cpu-backend {backend} applies on the CPU only"
    if backend == "auto":
        if precision == "bf16" and openvino_available():
            return "openvino", ""
        return "eager", ""
    if backend != "eager" and precision == "int8":
        return "eager", f"--cpu-backend {backend} does not run int8 models: eager"
    if backend == "openvino" and not openvino_available():
        return "eager", "openvino is not installed (pip install 'rtagx[openvino]'): eager"
    return backend, ""


def _compiled_key(identity: ModelIdentity, precision: str, *parts: str) -> str:
    """Name of a compiled tower on disk: model, precision, runtime version and CPU all change it."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = "".join(line for line in f if line.startswith(("model name", "flags"))).split("\n\n")[0]
    except OSError:
        pass
    h = hashlib.blake2b(digest_size=12)
    for part in (identity.key, precision, cpu, *parts):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _openvino_tower(visual: Any, example: Any, precision: str, threads: int, key: str, folder: Path | None) -> Any:
    """The image tower as an OpenVINO compiled model, from ``folder`` when an earlier run left it
    there (0.3-10 s), else converted from torch (40-100 s on 2 shared cores) and kept for the next run."""
    import copy

    import openvino as ov
    import torch

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        # one stream per thread, each running a share of the batch: no barrier between the cores
        # (+5-10% over one latency stream of all threads at batch 4-64 on 2 cores, README)
        "PERFORMANCE_HINT": "THROUGHPUT",
        "NUM_STREAMS": max(1, threads),
        "INFERENCE_NUM_THREADS": threads,
    }
    blob = folder / f"openvino-{key}.blob" if folder else None
    if blob is not None and blob.is_file():
        try:
            return core.import_model(blob.read_bytes(), "CPU", config)
        except Exception as e:  # a blob from another OpenVINO build: convert again
            log.info("cached OpenVINO model %s unusable (%s): converting again", blob, e)
    tower = copy.deepcopy(visual).float().eval()  # fp32 graph; the precision hint decides the math
    size = tuple(example.shape[1:])
    with torch.no_grad():
        model = ov.convert_model(tower, example_input=example.float(), input=[(-1, *size)])
    compiled = core.compile_model(model, "CPU", config)
    if blob is not None:
        try:
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f"{blob.name}.{os.getpid()}.tmp")
            exported = compiled.export_model()
            tmp.write_bytes(exported.getvalue() if hasattr(exported, "getvalue") else exported)
            os.replace(tmp, blob)
        except OSError as e:  # a read-only cache folder only costs the next run the conversion
            log.info("cannot keep the OpenVINO model in %s: %s", blob.parent, e)
    return compiled


def _streamed(compiled: Any, streams: int) -> Callable[[np.ndarray], np.ndarray]:
    """Run a batch on an OpenVINO model compiled with several streams: the batch is split into one
    share per stream, the shares run at once, and the outputs come back in order."""
    import openvino as ov

    n = max(1, min(streams, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))
    queue = ov.AsyncInferQueue(compiled, n)

    def run(batch: np.ndarray) -> np.ndarray:
        shares = np.array_split(batch, min(n, len(batch)))
        outputs: list[np.ndarray | None] = [None] * len(shares)

        def done(request: Any, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        queue.set_callback(done)
        for i, share in enumerate(shares):
            queue.start_async({0: np.ascontiguousarray(share)}, i)
        queue.wait_all()
        if any(o is None for o in outputs):  # never hand back rows out of step with the batch
            raise RuntimeError("an OpenVINO request returned no output")
        return np.concatenate([o for o in outputs if o is not None])

    return run


def _inductor_tower(visual: Any, example: Any, folder: Path | None) -> Any:
    """The image tower compiled by torch.compile (inductor, frozen weights); inductor's FX graph
    and AOTAutograd caches live in ``folder``/inductor so later runs skip most of the compile."""
    import torch

    if folder is not None and not _USER_INDUCTOR_DIR:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    compiled = torch.compile(visual, dynamic=False, options={"freezing": True})
    with torch.inference_mode():
        compiled(example)  # compiles now, in this (background) thread
    return compiled


class Encoder:
    """A loaded model: encodes image batches and prompt texts into L2-normalized float32 vectors."""

    def __init__(
        self,
        resolved: ResolvedModel,
        model: Any,
        text_model: Any,
        tokenizer: Any,
        device: str,
        precision: str,
        logit_scale: float | None,
        logit_bias: float | None,
    ) -> None:
        self.resolved = resolved
        self.identity = resolved.identity
        self.model = model  # full CLIP, or None when text_only
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.logit_scale = logit_scale
        self.logit_bias = logit_bias
        self.input_dtype: Any = None  # torch dtype the image batch is cast to (bf16 CPU models)
        self.channels_last = False
        # CPU backend of the image tower: what was resolved, what runs now, and why not when it fell back
        self.cpu_backend = "eager"
        self.backend = "eager"
        self.backend_note = ""
        self.backend_seconds = 0.0  # time the background preparation took
        self.compile_dir: Path | None = None
        self._fast: Callable[[Any], Any] | None = None
        self._fast_batch: int | None = None  # compile: the one batch size the compiled graph takes
        self._preparing: threading.Thread | None = None
        self._job_images: int | None = None  # images the run will encode (None: not told, prepare anyway)

    @property
    def has_image_tower(self) -> bool:
        return self.model is not None

    def preprocess_cfg(self) -> dict[str, Any]:
        if self.model is None:
            raise ModelError("this encoder was loaded without its image tower")
        return dict(self.model.visual.preprocess_cfg)

    def _autocast(self):
        import contextlib

        import torch

        if self.device == "cpu":  # CPU models are cast (bf16) or quantized (int8) at load: no autocast
            return contextlib.nullcontext()
        if self.precision in ("fp16", "bf16"):
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast(device_type=self.device if self.device != "mps" else "mps", dtype=dtype)
        return contextlib.nullcontext()

    def encode_images(self, batch: Any) -> np.ndarray:
        """Encode a normalized NCHW float batch; returns [N, D] unit vectors as float32."""
        import torch

        if self.model is None:
            raise ModelError("this encoder was loaded without its image tower")
        with torch.inference_mode(), self._autocast():
            if self.device == "cuda":
                # page-locked host memory lets the copy run asynchronously; only worth it on CUDA
                x = batch.pin_memory().to(self.device, non_blocking=True)
            else:
                x = batch.to(self.device, non_blocking=True)
            if self.input_dtype is not None:
                x = x.to(self.input_dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = self._fast_features(x) if self.cpu_backend != "eager" else None
            if features is None:
                features = self.model.encode_image(x)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            return features.cpu().numpy()

    @property
    def backend_started(self) -> bool:
        """Whether the faster backend's preparation has begun (it may be finished, or have failed)."""
        return self._preparing is not None

    def plan(self, images: int) -> None:
        """Tell the encoder how many images the run will encode: a backend that is not on disk yet
        is prepared only for a job of at least ``BACKEND_MIN_IMAGES`` (a first conversion takes a
        minute or more of both cores; a small run is done sooner in eager torch, and never waits)."""
        self._job_images = images

    def _worth_preparing(self) -> bool:
        if self._job_images is None or self._job_images >= BACKEND_MIN_IMAGES:
            return True
        return self._prepared_before()

    def _prepared_before(self) -> bool:
        """A compiled tower from an earlier run is on disk: loading it takes about a second."""
        if self.compile_dir is None:
            return False
        if self.cpu_backend == "openvino":
            return (self.compile_dir / f"openvino-{self._key()}.blob").is_file()
        return (self.compile_dir / f"inductor-{self._key()}.done").is_file()

    def _key(self) -> str:
        if self.cpu_backend == "openvino":
            return _compiled_key(self.identity, self.precision, _openvino_version())
        import torch

        return _compiled_key(self.identity, self.precision, torch.__version__)

    def _fast_features(self, x: Any) -> Any:
        """The faster backend's features, or None while it is not ready (eager runs this batch)."""
        if self._preparing is None and self._fast is None and self._worth_preparing():
            self.start_backend(x)
        fast = self._fast
        if fast is None or (self._fast_batch is not None and x.shape[0] != self._fast_batch):
            return None
        try:
            return fast(x)
        except Exception as e:  # never lose a run to a backend: eager from here on
            self._fall_back(f"{self.backend} failed while encoding ({_first_line(e)}): eager")
            return None

    def _fall_back(self, note: str) -> None:
        log.info("CPU backend: %s", note)
        self._fast = None
        self.backend = "eager"
        self.cpu_backend = "eager"
        self.backend_note = note

    def start_backend(self, example: Any) -> None:
        """Prepare the faster image tower in a background thread from an example batch; eager torch
        encodes until it is ready (``wait_backend`` waits for it)."""
        if self.cpu_backend == "eager" or self._preparing is not None or self.model is None:
            return
        example = example.detach().clone()
        self._preparing = threading.Thread(target=self._prepare, args=(example,), name="rtagx-backend", daemon=True)
        self._preparing.start()

    def _prepare(self, example: Any) -> None:
        import torch

        started = time.perf_counter()
        visual = self.model.visual
        threads = torch.get_num_threads()
        try:
            key = self._key()
            if self.cpu_backend == "openvino":
                compiled = _openvino_tower(visual, example, self.precision, threads, key, self.compile_dir)
                out_dtype = example.dtype
                run = _streamed(compiled, threads)

                def fast(x: Any) -> Any:
                    return torch.from_numpy(run(x.float().numpy())).to(out_dtype)

                self._fast_batch = None  # converted with a dynamic batch dimension
            else:
                module = _inductor_tower(visual, example, self.compile_dir)
                self._fast_batch = int(example.shape[0])
                if self.compile_dir is not None:  # inductor's caches now hold this tower
                    with contextlib.suppress(OSError):
                        (self.compile_dir / f"inductor-{key}.done").touch()

                def fast(x: Any) -> Any:
                    return module(x)

        except Exception as e:
            self._fall_back(f"{self.cpu_backend} could not be prepared ({_first_line(e)}): eager")
            return
        finally:
            self.backend_seconds = time.perf_counter() - started
        self._fast = fast
        self.backend = self.cpu_backend
        log.info("CPU backend %s ready after %.1f s", self.backend, self.backend_seconds)

    def wait_backend(self, timeout: float | None = None) -> str:
        """Wait for the background preparation; returns the backend now in use. A run calls it at
        its end: a process must not exit while OpenVINO or inductor work in another thread (it
        aborts), and the compiled tower is then on disk for the next run."""
        if self._preparing is not None:
            self._preparing.join(timeout)
        return self.backend

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode prompt texts; returns [N, D] unit vectors as float32."""
        import torch

        out: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.inference_mode(), self._autocast():
                features = trimmed_text_forward(self.text_model, tokens)  # same vectors, less work
                if features is None:
                    features = self.text_model(tokens)
            features = torch.nn.functional.normalize(features.float(), dim=-1)
            out.append(features.cpu().numpy())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(out, axis=0)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _openvino_version() -> str:
    import openvino

    return str(getattr(openvino, "__version__", ""))


def _scalar(state: dict[str, Any], key: str) -> float | None:
    value = state.get(key)
    if value is None:
        return None
    return float(value.reshape(-1)[0])


def _load_text_tower(resolved: ResolvedModel) -> tuple[Any, float | None, float | None] | None:
    """Build only the text tower and fill it from the checkpoint; None when the layout is unfamiliar."""
    from open_clip.factory import load_state_dict
    from open_clip.model import _build_text_tower

    cfg = resolved.model_cfg
    if cfg.get("text_cfg", {}).get("hf_model_name") or "multimodal_cfg" in cfg:
        return None
    if resolved.checkpoint_file.endswith(".npz"):
        return None
    state = load_state_dict(resolved.checkpoint_file, device="cpu", weights_only=True)
    quick_gelu = bool(cfg.get("quick_gelu", False) or resolved.force_quick_gelu)
    tower = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=quick_gelu, cast_dtype=None)
    if "positional_embedding" in state:  # CLIP layout: text weights at the top level
        text_state = {
            k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")
        }
    else:
        text_state = {k[len("text.") :]: v for k, v in state.items() if k.startswith("text.")}
    expected = set(tower.state_dict().keys())
    text_state = {k: v for k, v in text_state.items() if k in expected}
    if set(text_state) != expected:
        return None
    try:
        tower.load_state_dict(text_state, strict=True)
    except RuntimeError:
        return None
    tower.eval()
    scale = _scalar(state, "logit_scale")
    return tower, (float(np.exp(scale)) if scale is not None else None), _scalar(state, "logit_bias")


def _cpu_cast(module: Any, precision: str) -> Any:
    """bf16 on the CPU: cast the weights once (autocast re-casts every weight on every call and
    routes attention through a slow path: about 3x slower than fp32 here, bench/cpu_options.py)."""
    import torch

    if precision == "bf16":
        return module.to(torch.bfloat16)
    return module


def _quantize_int8(visual: Any) -> Any:
    """Dynamic int8 quantization of the image tower's ``nn.Linear`` layers (weights int8, activations
    quantized per batch). Attention's packed in-projection stays fp32."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize = getattr(getattr(torch.ao, "quantization", None), "quantize_dynamic", None)
        if quantize is None:
            raise UsageError(
                f"--precision int8 needs torch.ao.quantization.quantize_dynamic, which torch "
                f"{torch.__version__} no longer has; use --precision bf16 or fp32"
            )
        return quantize(visual, {torch.nn.Linear}, dtype=torch.qint8)


#: The Python packages open_clip's Hugging Face tokenizers (SigLIP, ...) import, and the extra that
#: brings them.
TOKENIZER_PACKAGES = ("transformers", "sentencepiece", "tokenizers")
TOKENIZER_EXTRA = "pip install 'rtagx[siglip]'"


def load_tokenizer(resolved: ResolvedModel) -> Any:
    """open_clip's tokenizer for the model; a missing tokenizer package or tokenizer file is one
    clear :class:`ModelError` line instead of an internal error."""
    import open_clip

    try:
        return open_clip.get_tokenizer(resolved.open_clip_name)
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        if any(p in missing for p in TOKENIZER_PACKAGES):
            raise ModelError(
                f"model {resolved.identity.name} needs a Hugging Face tokenizer, and the Python package "
                f"'{missing}' is not installed: {TOKENIZER_EXTRA}"
            ) from None
        raise
    except OSError as e:  # tokenizer files neither in the Hugging Face cache nor downloadable
        raise ModelError(
            f"the tokenizer of model {resolved.identity.name} cannot be loaded "
            f"({str(e).splitlines()[0][:200]}): run `rtagx doctor --download` once on a connected machine"
        ) from None


#: glibc malloc: blocks from this size up are mmapped (and unmapped when freed), and free memory at
#: the top of the heap beyond the trim threshold goes back to the system (set the way glibc's own
#: dynamic threshold would reach after a few large frees).
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20


def keep_activation_memory() -> bool:
    """Let the image tower reuse its activation memory instead of mapping fresh pages every call.

    A ViT-B/16 batch of 16 allocates and frees tens of activation tensors of 1-40 MB per forward
    pass. Under glibc's default, blocks over 128 KB are mmapped and unmapped on free until a large
    free raises the threshold, so a process that has not freed a large block yet faults in fresh
    zeroed pages on every operator: the same eager bf16 tower ran at 21-23 images/s in such a
    process against 29-32 with these thresholds (2 cores, Intel Xeon with AMX, alternating
    processes). Linux/glibc only; elsewhere a no-op. Returns whether it was applied."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD)) and bool(
            libc.mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD)
        )
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def _load_problem(error: Exception) -> str:
    """Why a checkpoint did not load, in a line. torch's own message for a file its safe loader
    refuses advises ``weights_only=False``, which would run any code a pickle carries: rtagx never
    does that, so the advice is replaced by what it means."""
    text = str(error)
    if "Weights only load failed" in text:
        return "not a checkpoint torch can read without running code from it (damaged, truncated, or not a PyTorch weights file)"
    first = text.splitlines()[0] if text else type(error).__name__
    return first.split("  (Could this error message be improved?")[0].strip()[:300]


def load_encoder(
    resolved: ResolvedModel,
    *,
    device: str = "auto",
    precision: str = "auto",
    text_only: bool = False,
    threads: int | None = None,
    channels_last: bool = False,
    cpu_bf16: bool | None = None,
    cpu_backend: str = "eager",
    compile_dir: Path | None = None,
) -> Encoder:
    """Build the network for a resolved model. Errors become one-line :class:`ModelError`s.

    ``threads``: torch intra-op threads (None/0: torch's default, one per core). ``channels_last``:
    NHWC memory format for the image tower's convolutions (helps convolutional towers; a ViT has
    only its patch embedding, see bench/cpu_options.py). ``cpu_bf16``: the ``cpu_bf16`` setting
    (None: detect the CPU's bf16 instructions). ``cpu_backend``: the image tower's CPU backend (see
    :func:`resolve_cpu_backend`), prepared in the background from the first batch; ``compile_dir``
    keeps compiled towers between runs (None: nowhere, each process converts again).
    """
    if resolved.identity.kind != "clip":
        from rtagx.model.taggers import load_tagger

        return load_tagger(resolved, device=device, threads=threads)
    import open_clip
    import torch

    device = resolve_device(device)
    precision = resolve_precision(precision, device, cpu_bf16=cpu_bf16)
    if threads:
        torch.set_num_threads(threads)
    if device == "cpu":
        keep_activation_memory()
    tokenizer = load_tokenizer(resolved)
    if text_only:
        try:
            built = _load_text_tower(resolved)
        except Exception as e:  # a damaged checkpoint
            raise ModelError(
                f"cannot load weights of {resolved.identity.name} from {resolved.checkpoint_file}: {_load_problem(e)}"
            ) from None
        if built is not None:
            tower, scale, bias = built
            tower.to(device)
            if device == "cpu":
                tower = _cpu_cast(tower, precision)
            return Encoder(resolved, None, tower, tokenizer, device, precision, scale, bias)
    try:
        model = open_clip.create_model(
            resolved.open_clip_name,
            pretrained=resolved.checkpoint_file,
            device=device,
            force_quick_gelu=resolved.force_quick_gelu,
            force_preprocess_cfg=resolved.preprocess_overrides or None,
        )
    except Exception as e:
        raise ModelError(
            f"cannot load weights of {resolved.identity.name} from {resolved.checkpoint_file}: {_load_problem(e)}"
        ) from None
    model.eval()
    scale = float(model.logit_scale.exp().item()) if getattr(model, "logit_scale", None) is not None else None
    bias = float(model.logit_bias.item()) if getattr(model, "logit_bias", None) is not None else None
    input_dtype = None
    if device == "cpu" and precision == "bf16":
        model = _cpu_cast(model, precision)
        input_dtype = torch.bfloat16
    elif device == "cpu" and precision == "int8":
        model.visual = _quantize_int8(model.visual)
    if channels_last:
        model.visual = model.visual.to(memory_format=torch.channels_last)
    encoder = Encoder(resolved, model, model.encode_text, tokenizer, device, precision, scale, bias)
    encoder.input_dtype = input_dtype
    encoder.channels_last = channels_last
    encoder.cpu_backend, encoder.backend_note = resolve_cpu_backend(cpu_backend, device, precision)
    encoder.compile_dir = compile_dir
    return encoder
