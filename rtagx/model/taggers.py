"""Trained multi-label taggers beside CLIP: WD14 v3 (ONNX) and JoyTag (torch).

A tagger has fixed outputs: one probability per tag of its label file. rtagx treats that probability
vector as the image's "vector": the cache stores it keyed by the model identity (dimension = number
of tags), and scoring maps it through a vocabulary instead of a prompt matrix
(:mod:`rtagx.tags.labels`), so ``retag`` re-decides without decoding, as for CLIP.

Which files make which kind (detected from the files, never from the name):

* ``wd14``: ``model.onnx`` + ``selected_tags.csv`` (columns ``tag_id,name,category,count``; category
  9 rating, 0 general, 4 character). Input ``[N, H, W, 3]`` float32, BGR, 0-255 (also NCHW, float16
  or a fixed batch, as the graph declares: :class:`OnnxTagger`); the first output ``[N, T]``
  probabilities (the v3 graphs end in a sigmoid), as the reference app reads it.
* ``joytag``: ``config.json`` + ``model.safetensors`` + ``top_tags.txt`` (one tag a line, all general).

Preprocessing, as each model's reference code (SmilingWolf's wd-tagger space ``prepare_image``;
fancyfeast/joytag's ``prepare_image``): pad the upright image to a centred white square, one bicubic
resize to the input size (:class:`~rtagx.imaging.geometry.PreprocessSpec` ``pad_first=True``,
``fill_color=255``), from a full-resolution decode (no JPEG draft), ICC profiles ignored as the
references ignore them. Alpha goes over white for both (WD14's reference does so; JoyTag's pastes
without a mask, which shows whatever colour transparent pixels store: usually black).
tests/test_taggers.py states the distance to the reference on real photos.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from rtagx.errors import ModelError, UsageError
from rtagx.model.encoder import Encoder, ModelIdentity, ResolvedModel, digest_file, is_offline

TAGGER_KINDS = ("wd14", "joytag")

#: Names accepted by ``--model`` and their Hugging Face repositories.
KNOWN_TAGGERS: dict[str, str] = {
    "wd-vit-tagger-v3": "SmilingWolf/wd-vit-tagger-v3",
    "wd-swinv2-tagger-v3": "SmilingWolf/wd-swinv2-tagger-v3",
    "wd-convnext-tagger-v3": "SmilingWolf/wd-convnext-tagger-v3",
    "wd-vit-large-tagger-v3": "SmilingWolf/wd-vit-large-tagger-v3",
    "wd-eva02-large-tagger-v3": "SmilingWolf/wd-eva02-large-tagger-v3",
    "joytag": "fancyfeast/joytag",
}

#: The files of each kind: (weights, labels, other files).
KIND_FILES: dict[str, tuple[str, ...]] = {
    "wd14": ("model.onnx", "selected_tags.csv"),
    "joytag": ("model.safetensors", "top_tags.txt", "config.json"),
}

#: WD14 ``selected_tags.csv`` categories.
RATING, GENERAL, CHARACTER = 9, 0, 4

#: The nominal input size (both WD14 v3 and JoyTag take 448 px; a WD14 graph's own input shape wins).
NOMINAL_SIZE = 448

#: CLIP's mean and std (JoyTag normalizes with them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def detect_kind(folder: Path) -> str | None:
    """The tagger kind whose files are all in ``folder``, or None."""
    for kind, names in KIND_FILES.items():
        if all((folder / n).is_file() for n in names):
            return kind
    return None


def _hub_cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def tagger_source(model: str) -> tuple[str, str] | None:
    """``("dir", path)`` or ``("hub", repo)`` when ``--model`` names a tagger; None for a CLIP model.

    A folder always names a tagger (CLIP takes a config JSON file); ``hf-hub:OWNER/REPO`` names a
    tagger when the Hugging Face cache holds a tagger's label file for it, or its name says tagger."""
    if model in KNOWN_TAGGERS:
        return ("hub", KNOWN_TAGGERS[model])
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:") :].strip("/")
        if any(_hub_cached(repo, n) for n in ("selected_tags.csv", "top_tags.txt")):
            return ("hub", repo)
        if "tagger" in repo.lower() or "joytag" in repo.lower():
            return ("hub", repo)
        return None
    folder = Path(model).expanduser()
    if folder.is_dir():
        return ("dir", str(folder.resolve()))
    return None


def _fetch_help(repo: str, names: Sequence[str], why: str) -> str:
    files = " ".join(names)
    return (
        f"tagger {repo} is not on this machine and cannot be downloaded ({why}): run "
        f"`huggingface-cli download {repo} {files}` once on a connected machine (then copy "
        f"~/.cache/huggingface here), or pass --model DIR, a folder with those files"
    )


def _hub_files(repo: str, offline: bool) -> tuple[str, dict[str, str]]:
    """Kind and local paths of a hub tagger's files: the Hugging Face cache first, then a download."""
    for kind, names in KIND_FILES.items():
        cached = {n: _hub_cached(repo, n) for n in names}
        if all(cached.values()):
            return kind, {n: p for n, p in cached.items() if p}
    kind = "joytag" if "joytag" in repo.lower() else "wd14"
    names = KIND_FILES[kind]
    if offline:
        raise ModelError(_fetch_help(repo, names, "offline; looked in the Hugging Face cache"))
    from huggingface_hub import hf_hub_download

    out: dict[str, str] = {}
    for n in names:
        try:
            out[n] = hf_hub_download(repo, n)
        except Exception as e:  # network and hub errors come in many types
            raise ModelError(_fetch_help(repo, names, f"{type(e).__name__} fetching {n}")) from None
    return kind, out


def read_labels(kind: str, path: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(tag names, categories) of a label file: ``selected_tags.csv`` or ``top_tags.txt``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"label file {path} cannot be read: {e}") from None
    if kind == "joytag":
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        return names, (GENERAL,) * len(names)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "name" not in rows[0] or "category" not in rows[0]:
        raise ModelError(f"label file {path} is not a WD14 selected_tags.csv (needs name and category columns)")
    try:
        return tuple(r["name"] for r in rows), tuple(int(r["category"]) for r in rows)
    except (TypeError, ValueError) as e:
        raise ModelError(f"label file {path} has a bad category: {e}") from None


def resolve_tagger(
    source: tuple[str, str],
    model: str,
    *,
    offline: bool | None = None,
    digest: Callable[[Path], str] = digest_file,
) -> ResolvedModel:
    """Find a tagger's files and its identity (weights and label file hashes), without loading it."""
    where, value = source
    if where == "dir":
        folder = Path(value)
        found_kind = detect_kind(folder)
        if found_kind is None:
            raise ModelError(
                f"folder {model} is not a model folder: a WD14 tagger needs model.onnx + selected_tags.csv, "
                f"JoyTag needs config.json + model.safetensors + top_tags.txt"
            )
        kind = found_kind
        paths = {n: str(folder / n) for n in KIND_FILES[kind]}
    else:
        if offline is None:
            offline = is_offline()
        kind, paths = _hub_files(value, offline)
    weights, label_file = paths[KIND_FILES[kind][0]], paths[KIND_FILES[kind][1]]
    labels, categories = read_labels(kind, Path(label_file))
    config: dict[str, Any] = {}
    if kind == "joytag":
        import json

        try:
            config = json.loads(Path(paths["config.json"]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"JoyTag config {paths['config.json']} cannot be read: {e}") from None
    weights_hash = digest(Path(weights))
    labels_hash = digest(Path(label_file))
    identity = ModelIdentity(
        key=f"{kind}:sha:{weights_hash}|labels:{labels_hash}",
        name=model if where == "hub" and not model.startswith("hf-hub:") else (value if where == "hub" else model),
        pretrained=f"{kind} tagger",
        config_path=str(Path(label_file).resolve()),
        checkpoint_path=str(Path(weights).resolve()),
        checkpoint_hash=weights_hash,
        image_size=int(config.get("image_size", NOMINAL_SIZE)),
        kind=kind,
        labels=labels,
        categories=categories,
    )
    return ResolvedModel(identity, kind, config, weights)


class TaggerEncoder(Encoder):
    """A loaded tagger: decoded ``(size, size, 3)`` RGB uint8 arrays in, ``[N, T]`` probabilities out."""

    def __init__(self, resolved: ResolvedModel, device: str, size: int, mean: Any, std: Any) -> None:
        super().__init__(resolved, None, None, None, device, "fp32", None, None)
        self.kind = resolved.identity.kind
        cfg = {
            "size": size,
            "mean": mean,
            "std": std,
            "interpolation": "bicubic",
            "resize_mode": "longest",
            "fill_color": 255,
            "pad_first": True,
        }
        # PreprocessSpec.from_model reads model.visual.preprocess_cfg
        self.model = SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=cfg, image_size=size))
        self.n_tags = len(resolved.identity.labels)

    def encode_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def encode_images(self, batch: Any) -> np.ndarray:
        """From a normalized NCHW batch (the CLIP path's input): back to arrays, then the model."""
        x = np.asarray(batch.float().numpy() if hasattr(batch, "numpy") else batch, dtype=np.float32)
        mean = np.asarray(self.model.visual.preprocess_cfg["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.model.visual.preprocess_cfg["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        pixels = np.clip(np.rint((x * std + mean) * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return self.encode_arrays(list(pixels))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        raise ModelError(f"{self.identity.name} is a tagger with fixed tags: it has no text encoder")

    def _check(self, out: np.ndarray) -> np.ndarray:
        if out.ndim != 2 or out.shape[1] != self.n_tags:
            raise ModelError(
                f"tagger {self.identity.name} gives outputs of shape {tuple(out.shape)}, "
                f"but its label file has {self.n_tags} tags"
            )
        return np.ascontiguousarray(out, dtype=np.float32)


#: onnxruntime input element types rtagx can feed, as numpy dtypes (fp16 exports take float16 pixels).
ONNX_INPUT_TYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def onnx_input_layout(shape: Sequence[Any], name: str) -> tuple[str, int, int | None]:
    """(``"nhwc"`` or ``"nchw"``, square input size, fixed batch size or None) of a WD14 graph's input.

    SmilingWolf's exports are NHWC with a dynamic batch (v3: ``[?, 448, 448, 3]``); a converted graph
    may be NCHW (``[N, 3, 448, 448]``) and older or hand-made exports fix the batch at 1. The pixels
    are the same (BGR 0-255) in every layout: only the axes move. Unnamed sizes mean 448."""
    if len(shape) != 4:
        raise ModelError(f"tagger {name} takes {len(shape)}-D inputs {list(shape)}; WD14 graphs take [N, H, W, 3]")
    layout = "nchw" if shape[1] == 3 and shape[3] != 3 else "nhwc"
    h, w = (shape[2], shape[3]) if layout == "nchw" else (shape[1], shape[2])
    size = h if isinstance(h, int) else w if isinstance(w, int) else NOMINAL_SIZE
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ModelError(f"tagger {name} takes non-square {h}x{w} inputs ({layout.upper()} {list(shape)})")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return layout, int(size), batch


class OnnxTagger(TaggerEncoder):
    """WD14 v3: onnxruntime, NHWC float32 BGR 0-255 in, probabilities out.

    The graph's own input decides the layout (NHWC or NCHW), the element type (float32 or float16)
    and the batch: a graph with a fixed batch (1 in older exports) is run in slices of that size,
    the last one padded by repeating its final image, so any ``--batch-size`` works."""

    def __init__(self, resolved: ResolvedModel, session: Any, device: str) -> None:
        graph_input = session.get_inputs()[0]
        name = resolved.identity.name
        self.layout, size, self.fixed_batch = onnx_input_layout(graph_input.shape, name)
        dtype = ONNX_INPUT_TYPES.get(graph_input.type)
        if dtype is None:
            raise ModelError(f"tagger {name} takes {graph_input.type} inputs; rtagx feeds float or float16 pixels")
        super().__init__(resolved, device, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.session = session
        self.input_name = graph_input.name
        self.onnx_dtype = dtype

    def encode_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        x = np.stack(arrays)[..., ::-1]  # RGB -> BGR, 0-255
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x, dtype=self.onnx_dtype)
        step = self.fixed_batch or len(x)
        outs = []
        for start in range(0, len(x), step):
            part = x[start : start + step]
            if len(part) < step:  # a fixed-batch graph: fill the last slice, keep only its own rows
                part = np.concatenate([part, np.repeat(part[-1:], step - len(part), axis=0)])
            (out,) = self.session.run(None, {self.input_name: part})[:1]
            outs.append(np.asarray(out)[: len(x) - start])
        return self._check(np.concatenate(outs))


def onnx_providers(device: str) -> list[str]:
    """onnxruntime's execution providers for ``--device``: CUDA / CoreML where present, then CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted: list[str] = []
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        wanted.append("CUDAExecutionProvider")
    if device in ("auto", "mps") and "CoreMLExecutionProvider" in available:
        wanted.append("CoreMLExecutionProvider")
    return [*wanted, "CPUExecutionProvider"]


def load_tagger(resolved: ResolvedModel, *, device: str = "auto", threads: int | None = None, **_: Any) -> Encoder:
    """Load a resolved tagger (``text_only`` and precision options do not apply: ignored)."""
    kind = resolved.identity.kind
    if kind == "wd14":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError(
                "WD14 taggers run on onnxruntime, which is not installed: pip install 'rtagx[taggers]'"
            ) from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's worker threads spin between runs by default: the decode threads that prepare
        # the next batch, the cache writer and any other process lose those cores (bench/taggers.py:
        # WD14 on 2 busy cores, 4.4-4.5 s/image without spinning, 5.2-10.5 s with it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = onnx_providers(device)
        try:
            session = ort.InferenceSession(resolved.checkpoint_file, sess_options=options, providers=providers)
        except Exception as e:
            raise ModelError(
                f"cannot load tagger {resolved.identity.name} from {resolved.checkpoint_file}: "
                f"{str(e).splitlines()[0][:300]}"
            ) from None
        used = session.get_providers()[0]
        where = "cuda" if used.startswith("CUDA") else "mps" if used.startswith("CoreML") else "cpu"
        if device in ("cuda", "mps") and where != device:
            # an explicit device that is not there is a usage error, as for CLIP (resolve_device);
            # onnxruntime itself would quietly run on the CPU, many times slower than asked for
            wanted = "CUDAExecutionProvider" if device == "cuda" else "CoreMLExecutionProvider"
            raise UsageError(
                f"--device {device} was asked for, but onnxruntime runs tagger {resolved.identity.name} on the "
                f"CPU ({wanted} {'failed to start' if wanted in providers else 'is not installed'}"
                f"{': pip install onnxruntime-gpu' if device == 'cuda' and wanted not in providers else ''}; "
                f"try --device auto)"
            )
        return OnnxTagger(resolved, session, where)
    if kind == "joytag":
        from rtagx.model.joytag import load_joytag

        return load_joytag(resolved, device=device, threads=threads)
    raise ModelError(f"unknown tagger kind {kind!r}")
