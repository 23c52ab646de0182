"""Batched inference on the device: uint8 tiles in, feature rows out, in order.

On the device, a batch of tiles ``(n, S, S, 3) uint8`` is viewed as NCHW (which is already the
channels_last memory layout), converted to float, stain-normalised with the slide's fitted
transform when one is given (:mod:`wsi_mil.stain`), resized to the model's input size when S
differs (antialiased), and normalised with the data config's mean and std in one fused
multiply-add. The model runs under ``torch.inference_mode``, with bf16 (or fp16) autocast on
CUDA and fp32 on the CPU by default, optionally compiled with ``torch.compile``. A CUDA
out-of-memory error halves the batch size and retries the same tiles.

On CUDA, host tiles are copied on a side stream, so the copy of the next batch overlaps the
model's work on this one, and at most ``max_in_flight`` batches are queued on the device ahead of
the host (this bounds device memory however fast the loader is).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from wsi_mil.encoders.dataconfig import DataConfig
from wsi_mil.errors import WsiMilError

if TYPE_CHECKING:
    from wsi_mil.stain.base import FittedStain

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA (``fp16`` if the GPU lacks bf16), ``fp32`` elsewhere."""
    if precision not in PRECISIONS:
        raise WsiMilError(f"precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _interp_mode(name: str) -> str:
    """The ``F.interpolate`` mode for a data config's interpolation name (others: bilinear)."""
    return {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(str(name), "bilinear")


class InferenceEngine:
    """Runs an encoder over uint8 tiles on one device.

    ``data_config``: the encoder's input size (C, H, W), ``mean``/``std`` (on [0, 1] pixels)
    and ``interpolation``. ``batch_size``: tiles per forward pass (halved on CUDA OOM, kept lower
    afterwards). ``out_dtype``: dtype of the returned features (float32 or float16).
    ``max_in_flight``: batches queued on a CUDA device before :meth:`embed` waits for the oldest.
    """

    def __init__(
        self,
        model: nn.Module,
        data_config: DataConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        precision: str = "auto",
        compile: bool = False,
        out_dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        max_in_flight: int = 3,
    ) -> None:
        if int(batch_size) < 1:
            raise WsiMilError(f"batch size {batch_size}: must be >= 1")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.precision = resolve_precision(precision, self.device)
        self.out_dtype = out_dtype
        self.channels_last = channels_last
        self.input_hw: tuple[int, int] = data_config.hw
        self.interpolation = _interp_mode(data_config.interpolation)
        std = torch.tensor(data_config.std, dtype=torch.float32)
        mean = torch.tensor(data_config.mean, dtype=torch.float32)
        # x01 = x / 255; (x01 - mean) / std == x * scale + shift
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes repeat: autotuned kernels pay off
        model = model.eval().to(self.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.compiled = bool(compile)
        self._forward: Any = torch.compile(model) if compile else model
        self.oom_retries = 0
        self.max_in_flight = max(1, int(max_in_flight))
        self._in_flight: deque[torch.cuda.Event] = deque()
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    # -- preprocessing -------------------------------------------------------------------
    def preprocess(self, tiles: torch.Tensor, stain: FittedStain | None = None) -> torch.Tensor:
        """(n, S, S, 3) uint8 on the device -> (n, 3, H, W) float32 normalised, channels_last.

        ``stain``: the slide's fitted stain transform, applied to the float pixels (on [0, 255],
        unquantised) before resizing and the mean/std normalisation.
        """
        x = tiles.permute(0, 3, 1, 2).float()
        if stain is not None:
            x = stain(x, channels_last=False)
        if tuple(x.shape[-2:]) != self.input_hw:
            down = x.shape[-2] > self.input_hw[0] or x.shape[-1] > self.input_hw[1]
            kwargs = {"antialias": down} if self.interpolation in ("bilinear", "bicubic") else {}
            x = F.interpolate(x, size=self.input_hw, mode=self.interpolation, **kwargs)
        x = torch.addcmul(self._shift, x, self._scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, tiles: torch.Tensor, stain: FittedStain | None = None) -> torch.Tensor:
        n = tiles.shape[0]
        if self.compiled and n < self.batch_size:
            # a constant batch shape avoids recompiling for every slide's last batch
            pad = tiles.new_zeros((self.batch_size - n, *tiles.shape[1:]))
            tiles = torch.cat([tiles, pad])
        x = self.preprocess(tiles, stain)
        if self.precision in _AUTOCAST:
            with torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision]):
                y = self._forward(x)
        else:
            y = self._forward(x)
        if y.ndim != 2:
            raise WsiMilError(f"the encoder returned shape {tuple(y.shape)}; expected (batch, features): "
                              "build it with num_classes=0")
        return y[:n].to(self.out_dtype)

    def upload(self, tiles: torch.Tensor) -> torch.Tensor:
        """``tiles`` on the device. From pinned host memory to CUDA, the copy runs on a side
        stream (overlapping the model's work) that the current stream then waits for."""
        if self._copy_stream is None or tiles.device.type != "cpu":
            return tiles.to(self.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            dev = tiles.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        dev.record_stream(compute)  # freed for reuse only once the model's work on it has run
        return dev

    def _throttle(self) -> None:
        """Keep at most ``max_in_flight`` batches queued on a CUDA device."""
        if self.device.type != "cuda":
            return
        event = torch.cuda.Event(blocking=True)  # a blocking wait sleeps instead of spinning a core
        event.record(torch.cuda.current_stream(self.device))
        self._in_flight.append(event)
        while len(self._in_flight) > self.max_in_flight:
            self._in_flight.popleft().synchronize()

    # -- public --------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until the device has run everything queued so far (a no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._in_flight.clear()

    @torch.inference_mode()
    def embed(self, tiles: torch.Tensor, stain: FittedStain | None = None) -> torch.Tensor:
        """Features of ``tiles`` (n, S, S, 3) uint8 (host or device) -> (n, D) on the device.

        ``stain``: the slide's fitted stain transform (:meth:`preprocess`), or None.

        The host-to-device copy is asynchronous from pinned host memory (see :meth:`upload`).
        On ``torch.cuda.OutOfMemoryError`` the batch size is halved and the same rows retried;
        at batch size 1 the error is raised.
        """
        tiles = self.upload(tiles)
        out = []
        i = 0
        n = tiles.shape[0]
        while i < n:
            j = min(n, i + self.batch_size)
            try:
                out.append(self._run(tiles[i:j], stain))
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                self.oom_retries += 1
                log.warning("CUDA out of memory: batch size lowered to %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            i = j
        self._throttle()
        if not out:
            dim = self.embed_dim_probe()
            return torch.empty((0, dim), dtype=self.out_dtype, device=self.device)
        return out[0] if len(out) == 1 else torch.cat(out)

    def embed_dim_probe(self) -> int:
        """Feature width, from one forward pass of a blank tile (used for empty inputs)."""
        h, w = self.input_hw
        with torch.inference_mode():
            return int(self.model(torch.zeros(1, 3, h, w, device=self.device)).shape[1])
