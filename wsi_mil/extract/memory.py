"""A device-memory estimate for an extraction run, printed before it starts.

``weights``: the parameters and buffers as stored (fp32; autocast computes in bf16/fp16 without
casting the weights). ``activations``: for a timm ViT, the largest set of tensors alive inside one
block at the run's batch size (the residual stream, its norm, the packed q/k/v, the MLP's hidden
and activated tensors), in the autocast dtype, plus the batch of float32 input images; attention
runs through PyTorch's fused kernels and keeps no T x T matrix on CUDA. For other models (CNNs)
the activations are measured once with forward hooks on one image and scaled to the batch. The
figure is an estimate (allocator slack and cuDNN workspaces come on top); the OOM back-off of
:class:`~wsi_mil.extract.engine.InferenceEngine` still halves the batch if it is exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsi_mil.encoders.dataconfig import DataConfig

_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs on its device: ``weights`` + ``activations`` at ``batch_size``."""

    weights: int
    activations: int
    batch_size: int
    precision: str
    device: str
    device_total: int | None = None

    @property
    def total(self) -> int:
        return self.weights + self.activations

    @property
    def fits(self) -> bool:
        """False when the estimate exceeds the device's total memory (unknown device: True)."""
        return self.device_total is None or self.total <= self.device_total

    def line(self) -> str:
        """One line for the log, e.g. ``memory estimate (cuda:0, bf16, batch 256): weights 4.54 GB + ...``."""
        have = f" of {self.device_total / GB:.1f} GB on the device" if self.device_total else ""
        text = (f"memory estimate ({self.device}, {self.precision}, batch {self.batch_size}): weights "
                f"{self.weights / GB:.2f} GB + activations ~{self.activations / GB:.2f} GB = ~{self.total / GB:.2f} GB{have}")
        if not self.fits:
            text += "; above the device's memory: lower --batch-size (the OOM back-off would halve it)"
        return text


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as stored."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(int(t.numel()) * t.element_size() for t in tensors)


def _vit_parts(model: nn.Module) -> Any:
    inner = getattr(model, "backbone", model)
    return inner if hasattr(inner, "blocks") and hasattr(inner, "patch_embed") and hasattr(inner, "embed_dim") else None


def vit_activation_bytes(vit: Any, hw: tuple[int, int], batch: int, elem: int) -> int:
    """Peak activation bytes of one timm ViT block at ``batch`` images of ``hw`` px (see module doc)."""
    patch = vit.patch_embed.patch_size
    tokens = (hw[0] // patch[0]) * (hw[1] // patch[1]) + int(getattr(vit, "num_prefix_tokens", 1))
    width = int(vit.embed_dim)
    fc1 = getattr(getattr(vit.blocks[0], "mlp", None), "fc1", None)
    hidden = int(fc1.out_features) if isinstance(fc1, nn.Linear) else 4 * width
    per_token = 3 * width + 2 * hidden  # residual + norm + qkv (3D) dominated by the MLP: hidden + activated
    return int(batch * tokens * max(per_token, 5 * width) * elem)


def measured_activation_bytes(model: nn.Module, hw: tuple[int, int], batch: int, elem: int) -> int:
    """Largest (input + output) bytes of any leaf module on one fp32 image, scaled to ``batch`` and ``elem``."""
    peak = [0]

    def hook(_m: nn.Module, args: tuple, out: object) -> None:
        size = sum(a.numel() for a in args if isinstance(a, torch.Tensor))
        size += out.numel() if isinstance(out, torch.Tensor) else 0
        peak[0] = max(peak[0], size)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 3, *hw, device=device))
    finally:
        for h in handles:
            h.remove()
    return peak[0] * batch * elem


def estimate_memory(model: nn.Module, data_config: DataConfig, batch_size: int, precision: str,
                    device: torch.device) -> MemoryEstimate:
    """The estimate for ``model`` run at ``batch_size`` under ``precision`` (``bf16``/``fp16``/``fp32``) on ``device``."""
    elem = _BYTES.get(precision, 4)
    hw = data_config.hw
    vit = _vit_parts(model)
    acts = (vit_activation_bytes(vit, hw, batch_size, elem) if vit is not None
            else measured_activation_bytes(model, hw, batch_size, elem))
    acts += batch_size * 3 * hw[0] * hw[1] * 4  # the normalised float32 input batch
    total = None
    if device.type == "cuda":
        total = int(torch.cuda.get_device_properties(device).total_memory)
    return MemoryEstimate(weights_bytes(model), int(acts), int(batch_size), precision, str(device), total)
