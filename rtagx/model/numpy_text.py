"""A CLIP text tower in numpy: encode a few query texts without importing torch or open_clip.

Why: ``rtagx search`` with a new text must load a text tower, and importing torch and open_clip
alone takes 3.5-4 s on a 2-core machine (open_clip pulls in torchvision, which starts torch's
compiler). The text tower of a CLIP model is a small causal transformer; for one query of ~10
tokens numpy runs it in tens of milliseconds. This module reads the weights straight from the
checkpoint (torch's zip format or safetensors, only the text tensors, never unpickling code),
tokenizes like open_clip's ``SimpleTokenizer`` and computes what open_clip's ``encode_text``
computes. It covers the standard CLIP text tower (open_clip's ``TextTransformer`` with argmax
pooling, the layout of ViT-B/16, ViT-L/14 and the tiny test model); anything else returns None
and the caller loads the model with torch. A test holds it equal to open_clip's output.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bfloat16", "I64": np.int64}


def open_clip_dir() -> Path | None:
    """open_clip's package folder, found without importing it (which would import torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# -- tokenizer (open_clip's SimpleTokenizer, clean="lower") ------------------------------------------


@lru_cache(maxsize=1)
def tokenizer_at(bpe_path: Path) -> Tokenizer:
    """One tokenizer per vocabulary file (building its tables takes ~0.1 s)."""
    return Tokenizer(bpe_path)


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class Tokenizer:
    """Byte-pair encoding exactly as open_clip's default tokenizer (its vocabulary file)."""

    def __init__(self, bpe_path: Path) -> None:
        with gzip.open(bpe_path) as f:
            merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        pairs = [tuple(m.split()) for m in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(p) for p in pairs]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {p: i for i, p in enumerate(pairs)}
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.cache: dict[str, str] = {}
        self.byte_encoder = _bytes_to_unicode()

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    @staticmethod
    def _words(text: str) -> list[str]:
        """open_clip's cleaning (ftfy, HTML unescape, whitespace, lower case) and word split. Plain
        printable ASCII needs neither ftfy nor the ``regex`` module: both are imported only for
        other text (ftfy changes nothing in such text, HTML entities aside, so text with "&" takes
        the full path; there \\p{L} is [a-z] and \\p{N} is [0-9])."""
        ascii_plain = text.isascii() and "&" not in text and all(c.isprintable() or c in " \t\n" for c in text)
        if not ascii_plain:
            import ftfy

            text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        text = " ".join(text.split()).strip().lower()
        tail = r"""|'s|'t|'re|'ve|'m|'ll|'d"""
        if ascii_plain and text.isascii():
            return re.findall(r"<start_of_text>|<end_of_text>" + tail + r"""|[a-z]+|[0-9]|[^\sa-z0-9]+""", text)
        import regex

        pattern = regex.compile(
            r"<start_of_text>|<end_of_text>" + tail + r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )
        return pattern.findall(text)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self._words(text):
            if word in ("<start_of_text>", "<end_of_text>"):
                ids.append(self.encoder[word])
                continue
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped).split(" "))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int) -> np.ndarray:
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot, *self.encode(text), self.eot]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
        return out


# -- reading tensors from a checkpoint without torch ----------------------------------------------------


class _Lazy:
    """A tensor in a torch zip checkpoint, read only when asked for. torch stores entries
    uncompressed, so a tensor is mapped from the file: only the pages used are read (a query
    touches ~10 rows of the 100 MB token embedding)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, key: str, dtype: Any, offset: int, size, stride) -> None:
        self.archive, self.name = archive, f"{prefix}data/{key}"
        self.dtype, self.offset, self.size, self.stride = dtype, offset, tuple(size), tuple(stride)

    def _flat(self) -> np.ndarray:
        info = self.archive.getinfo(self.name)
        raw_dtype = np.uint16 if self.dtype == "bfloat16" else self.dtype
        if info.compress_type == zipfile.ZIP_STORED and self.archive.filename:
            with open(self.archive.filename, "rb") as f:
                f.seek(info.header_offset)
                header = f.read(30)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            count = info.file_size // np.dtype(raw_dtype).itemsize
            flat: np.ndarray = np.memmap(self.archive.filename, dtype=raw_dtype, mode="r", offset=start, shape=(count,))
        else:
            flat = np.frombuffer(self.archive.read(self.name), dtype=raw_dtype)
        if self.dtype == "bfloat16":
            flat = (flat.astype(np.uint32) << 16).view(np.float32)
        return flat

    def load(self) -> np.ndarray:
        flat = self._flat()
        if not self.size:
            return np.array(flat[self.offset], dtype=np.float32)
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * flat.itemsize for s in self.stride)
        )
        if flat.dtype == np.float32 and view.flags.c_contiguous:
            return view  # mapped, not copied
        return np.array(view, dtype=np.float32)


class _CheckpointUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into lazy tensors; any other global is refused (no code runs)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *_: data
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in the checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        _, dtype, key, _location, _numel = pid
        return (dtype, key)

    def _rebuild(self, storage: tuple, offset: int, size, stride, *_: Any) -> _Lazy:
        dtype, key = storage
        return _Lazy(self.archive, self.prefix, key, dtype, offset, size, stride)


def _torch_zip_state(path: Path) -> dict[str, Any] | None:
    if not zipfile.is_zipfile(path):
        return None  # the legacy (pre-1.6) format: torch reads it
    archive = zipfile.ZipFile(path)
    pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
    if pkl is None:
        return None
    state = _CheckpointUnpickler(archive.read(pkl), archive, pkl[: -len("data.pkl")]).load()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state if isinstance(state, dict) else None


def _safetensors_state(path: Path) -> dict[str, Any]:
    class Slice:
        def __init__(self, dtype: Any, shape: list[int], start: int, stop: int) -> None:
            self.dtype, self.shape, self.start, self.stop = dtype, shape, start, stop

        def load(self) -> np.ndarray:
            with open(path, "rb") as f:
                f.seek(8 + header_len + self.start)
                raw = f.read(self.stop - self.start)
            if self.dtype == "bfloat16":
                flat = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                flat = np.frombuffer(raw, dtype=self.dtype)
            return flat.reshape(self.shape).astype(np.float32)

    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    return {
        k: Slice(_SAFETENSORS_DTYPES.get(v["dtype"], np.float32), v["shape"], *v["data_offsets"])
        for k, v in header.items()
        if k != "__metadata__" and v["dtype"] in _SAFETENSORS_DTYPES
    }


# -- the tower -------------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


_ERF = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.asarray(_ERF(x / math.sqrt(2.0)), dtype=np.float32))


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-1.702 * x))


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run small or memory-bound matrix products on one OpenBLAS thread. For a ~10 x 512 activation
    (or a matrix-vector product) a second thread buys nothing, and on a busy 2-core machine
    OpenBLAS's spinning threads made each product 5-20x slower (0.8-2 s per query, not 0.12 s). numpy offers no switch, so
    the bundled OpenBLAS is asked directly; where it cannot be found, nothing changes."""
    import ctypes
    import glob

    lib = None
    with suppress(OSError, IndexError):
        folder = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        lib = ctypes.CDLL(sorted(glob.glob(os.path.join(folder, "*openblas*")))[0])
    get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    put = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get is None or put is None:
        yield
        return
    before = int(get())
    put(1)
    try:
        yield
    finally:
        put(before)


class NumpyTextTower:
    """Encodes texts like open_clip's ``encode_text`` followed by L2 normalization."""

    def __init__(self, weights: dict[str, np.ndarray], heads: int, layers: int, context: int, quick_gelu: bool) -> None:
        self.w, self.heads, self.layers, self.context = weights, heads, layers, context
        self.act = _quick_gelu if quick_gelu else _gelu
        bpe = open_clip_dir()
        self.tokenizer = tokenizer_at(bpe / "bpe_simple_vocab_16e6.txt.gz") if bpe else None

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        with one_blas_thread():
            return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        assert self.tokenizer is not None
        w = self.w
        tokens = self.tokenizer(texts, self.context)
        # the pooled token is the end-of-text token (the highest id); with a causal mask nothing after
        # it matters, so the sequence is cut there: ~10 positions for a query instead of 77
        eot = tokens.argmax(-1)
        length = int(eot.max()) + 1
        x = w["token_embedding.weight"][tokens[:, :length]] + w["positional_embedding"][:length]
        n, seq, width = x.shape
        head = width // self.heads
        causal = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), 1)
        for i in range(self.layers):
            p = f"transformer.resblocks.{i}."
            y = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
            qkv = y @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
            q, k, v = (qkv[..., j * width : (j + 1) * width].reshape(n, seq, self.heads, head) for j in range(3))
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head) + causal
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = np.einsum("bhqk,bkhd->bqhd", scores, v).reshape(n, seq, width)
            x = x + attended @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
            y = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            y = self.act(y @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"])
            x = x + y @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
        x = _layer_norm(x, w["ln_final.weight"], w["ln_final.bias"])
        pooled = x[np.arange(n), eot] @ w["text_projection"]
        return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def _model_config(identity: dict[str, Any]) -> dict[str, Any] | None:
    path = identity.get("config_path")
    if not path:
        folder = open_clip_dir()
        path = folder / "model_configs" / f"{identity.get('name')}.json" if folder else None
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def load_text_tower(identity: dict[str, Any]) -> NumpyTextTower | None:
    """The numpy text tower of a cached model identity, or None when this model needs torch
    (an unfamiliar text tower, tokenizer or checkpoint format, or no local checkpoint file)."""
    cfg = _model_config(identity)
    checkpoint = identity.get("checkpoint_path")
    if cfg is None or not checkpoint or not os.path.isfile(checkpoint) or open_clip_dir() is None:
        return None
    text = cfg.get("text_cfg", {})
    familiar = {"context_length", "vocab_size", "width", "heads", "layers"}
    if set(text) - familiar or "multimodal_cfg" in cfg or cfg.get("custom_text"):
        return None  # hf towers, other pooling, tokenizers or norms: leave them to open_clip
    try:
        state = (
            _safetensors_state(Path(checkpoint))
            if checkpoint.endswith(".safetensors")
            else _torch_zip_state(Path(checkpoint))
        )
    except (OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, TypeError, EOFError):
        return None
    if not state:
        return None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layers = int(text.get("layers", 12))
    names = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"]
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        names += [p + s for s in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")]
        names += [p + s for s in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight")]
        names += [p + s for s in ("attn.out_proj.bias", "mlp.c_fc.weight", "mlp.c_fc.bias")]
        names += [p + s for s in ("mlp.c_proj.weight", "mlp.c_proj.bias")]
    if any(n not in state for n in names) or f"transformer.resblocks.{layers}.ln_1.weight" in state:
        return None
    weights = {n: state[n].load() for n in names}
    quick = bool(cfg.get("quick_gelu")) or identity.get("pretrained") == "openai"
    return NumpyTextTower(weights, int(text.get("heads", 8)), layers, int(text.get("context_length", 77)), quick)
