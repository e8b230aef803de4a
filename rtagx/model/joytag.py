"""JoyTag (fancyfeast/joytag): a ViT tagger whose weights are ``model.safetensors`` with a
``config.json`` (``{"class": "ViT", "n_tags", "image_size", "num_blocks", "patch_size", "d_model",
"mlp_dim", "num_heads", "use_sine", "layerscale_init", "head_mean_after", "cnn_stem", ...}``).

The network is written here from the published architecture, with the same parameter names, so the
published state dict loads strictly: a patch embedding (a convolution, or a small CNN stem described by
a string such as ``conv:c=64;ln;relu;...``), learned or sine position embeddings, pre-norm blocks with
a fused qkv projection and per-channel layer scales, a final LayerNorm, a mean over tokens and a
linear head. Outputs are ``sigmoid`` of the logits. At inference rtagx never drops patches (the
training-time ``patch_dropout`` is a regularizer; leaving it on would make outputs random).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rtagx.errors import ModelError
from rtagx.model.encoder import Encoder, ResolvedModel, resolve_device


def _sine_positions(width: int, height: int, depth: int, dtype: Any, device: Any) -> Any:
    import torch

    y, x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    omega = 1.0 / (10000 ** (torch.arange(depth // 4, device=device) / (depth // 4 - 1)))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype)


def build_network(config: dict[str, Any]) -> Any:
    """The JoyTag ViT for a ``config.json`` (``class`` must be ``ViT``)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if config.get("class", "ViT") != "ViT":
        raise ModelError(f"JoyTag config class {config.get('class')!r} is not supported (only ViT)")

    class ChannelScale(nn.Module):
        def __init__(self, channels: int, init: float) -> None:
            super().__init__()
            self.skip = nn.Parameter(torch.full((channels,), float(init)))

        def forward(self, x: Any) -> Any:
            return x * self.skip

    class ChannelsLastNorm(nn.Module):  # LayerNorm over the channels of an NCHW map
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(channels)

        def forward(self, x: Any) -> Any:
            return self.norm(x.transpose(1, 3)).transpose(1, 3)

    class Stem(nn.Module):
        def __init__(self, spec: str) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = 3
            for part in spec.split(";"):
                kind, _, args = part.partition(":")
                opts = dict(kv.split("=") for kv in args.split(",")) if args else {}
                if kind == "conv":
                    out = int(opts["c"])
                    layers.append(
                        nn.Conv2d(
                            channels,
                            out,
                            kernel_size=int(opts.get("k", 3)),
                            stride=int(opts.get("s", 2)),
                            padding=int(opts.get("p", 1)),
                            bias=True,
                        )
                    )
                    channels = out
                elif kind == "bn":
                    layers.append(nn.BatchNorm2d(channels))
                elif kind == "ln":
                    layers.append(ChannelsLastNorm(channels))
                elif kind == "relu":
                    layers.append(nn.ReLU())
                elif kind == "gelu":
                    layers.append(nn.GELU())
                else:
                    raise ModelError(f"JoyTag cnn_stem: unknown layer {kind!r}")
            self.conv = nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            return self.conv(x)

    class Positions(nn.Module):
        def __init__(self, d_model: int, count: int, use_sine: bool, patch: int) -> None:
            super().__init__()
            self.use_sine, self.patch, self.d_model = use_sine, patch, d_model
            if not use_sine:
                self.embedding = nn.Embedding(count, d_model)
                self.register_buffer("position_ids", torch.arange(count))

        def forward(self, x: Any, width: int, height: int) -> Any:
            if self.use_sine:
                return x + _sine_positions(width // self.patch, height // self.patch, self.d_model, x.dtype, x.device)
            return x + self.embedding(self.position_ids)

    class Mlp(nn.Module):
        def __init__(self, d_model: int, hidden: int) -> None:
            super().__init__()
            self.linear1 = nn.Linear(d_model, hidden)
            self.linear2 = nn.Linear(hidden, d_model)

        def forward(self, x: Any) -> Any:
            return self.linear2(F.gelu(self.linear1(x)))

    class Block(nn.Module):
        def __init__(self, heads: int, d_model: int, hidden: int, scale: float) -> None:
            super().__init__()
            self.heads, self.d_model = heads, d_model
            self.norm1 = nn.LayerNorm(d_model)
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
            self.out_proj = nn.Linear(d_model, d_model)
            self.skip_init1 = ChannelScale(d_model, scale)
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = Mlp(d_model, hidden)
            self.skip_init2 = ChannelScale(d_model, scale)

        def forward(self, x: Any) -> Any:
            n, length, d = x.shape
            q, k, v = (
                t.reshape(n, length, self.heads, d // self.heads).transpose(1, 2)
                for t in self.qkv_proj(self.norm1(x)).split(self.d_model, dim=-1)
            )
            attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, d)
            x = x + self.skip_init1(self.out_proj(attended))
            return x + self.skip_init2(self.mlp(self.norm2(x)))

    class JoyTagViT(nn.Module):
        def __init__(self, cfg: dict[str, Any]) -> None:
            super().__init__()
            blocks, patch, d_model = int(cfg["num_blocks"]), int(cfg["patch_size"]), int(cfg["d_model"])
            self.n_tags, self.image_size, self.patch = int(cfg["n_tags"]), int(cfg["image_size"]), patch
            self.head_mean_after = bool(cfg.get("head_mean_after", False))
            scale = cfg.get("layerscale_init")
            if scale is None:  # CaiT's depth rule, as the published code
                scale = 1e-1 if blocks <= 18 else 1e-5 if blocks <= 24 else 1e-6
            stem = cfg.get("cnn_stem")
            self.patch_embeddings = (
                Stem(stem) if stem else nn.Conv2d(3, d_model, kernel_size=patch, stride=patch, bias=True)
            )
            self.pos_embedding = Positions(
                d_model, (self.image_size // patch) ** 2, bool(cfg.get("use_sine", False)), patch
            )
            self.blocks = nn.ModuleList(
                [Block(int(cfg["num_heads"]), d_model, int(cfg["mlp_dim"]), float(scale)) for _ in range(blocks)]
            )
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, self.n_tags)

        def forward(self, images: Any) -> Any:
            _, _, height, width = images.shape
            x = self.patch_embeddings(images).flatten(2).transpose(1, 2)
            x = self.pos_embedding(x, width, height)
            for block in self.blocks:
                x = block(x)
            x = self.norm(x)
            if self.head_mean_after:
                return self.head(x).mean(dim=1)
            return self.head(x.mean(dim=1))

    return JoyTagViT(config)


def load_state(network: Any, path: str) -> None:
    """Fill the network from ``model.safetensors`` (strict; old heads with 9 extra outputs are cut)."""
    from safetensors.torch import load_file

    state = load_file(path, device="cpu")
    head = state.get("head.weight")
    if head is not None and head.shape[0] == network.n_tags + 9:
        state["head.weight"] = head[: network.n_tags]
        state["head.bias"] = state["head.bias"][: network.n_tags]
    network.load_state_dict(state, strict=True)


class JoyTagEncoder(Encoder):
    """JoyTag on torch: RGB arrays (padded white square, bicubic) -> CLIP mean/std -> sigmoid(logits)."""

    def __init__(self, resolved: ResolvedModel, network: Any, device: str) -> None:
        from rtagx.model.taggers import CLIP_MEAN, CLIP_STD

        super().__init__(resolved, None, None, None, device, "fp32", None, None)
        from types import SimpleNamespace

        size = int(network.image_size)
        cfg = {
            "size": size,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "interpolation": "bicubic",
            "resize_mode": "longest",
            "fill_color": 255,
            "pad_first": True,
        }
        self.model = SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=cfg, image_size=size))
        self.network = network
        self.kind = "joytag"

    def encode_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from rtagx.imaging.decode import PreprocessSpec, to_model_batch

        batch = to_model_batch(list(arrays), PreprocessSpec.from_model(self.model))
        with torch.inference_mode():
            logits = self.network(batch.to(self.device))
            out = torch.sigmoid(logits.float()).cpu().numpy()
        if out.shape[1] != len(self.identity.labels):
            raise ModelError(
                f"JoyTag model {self.identity.name} has {out.shape[1]} outputs, but top_tags.txt lists "
                f"{len(self.identity.labels)} tags"
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        raise ModelError(f"{self.identity.name} is a tagger with fixed tags: it has no text encoder")


def load_joytag(resolved: ResolvedModel, *, device: str = "auto", threads: int | None = None) -> Encoder:
    import torch

    device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    config = dict(resolved.model_cfg)
    try:
        network = build_network(config)
        load_state(network, resolved.checkpoint_file)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"cannot load JoyTag {resolved.identity.name} from {resolved.checkpoint_file}: "
            f"{str(e).splitlines()[0][:300]}"
        ) from None
    if network.image_size % network.patch:
        raise ModelError(f"JoyTag image size {network.image_size} is not a multiple of its patch size {network.patch}")
    network.eval().to(device)
    return JoyTagEncoder(resolved, network, device)
