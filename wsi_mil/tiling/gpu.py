"""GPU tile path: the slide's compressed JPEG tiles decoded in batches with nvJPEG, resampled on the device.

Used only when asked for (``WSI_MIL_TILE_DEVICE=cuda``), a CUDA device is present and the level's JPEG
tiles are YCbCr (nvJPEG ignores the Adobe marker of RGB-coded tiles, see :func:`rgb_reason`); anything
else falls back to the CPU direct reader with the reason recorded in the store
(``tile_decoder_fallback``). It reads the same compressed tiles as
:class:`~wsi_mil.tiling.direct.DirectJpegLevel` (tables spliced in, an Adobe marker for RGB data)
and decodes every source tile a batch of our tiles touches with one
``torchvision.io.decode_jpeg(list, device=...)`` call, assembles each tile's window on the device,
and resamples it with an antialiased bilinear filter (``torch.nn.functional.interpolate``) over
the integer window covering the exact box. Tiles go back to the host for the store's JPEG
encoding (threads, libjpeg-turbo). The same code runs with ``device="cpu"`` (torchvision's CPU
decoder), which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from numpy.typing import NDArray
from torchvision.io import ImageReadMode, decode_jpeg

from wsi_mil.tiling.direct import DirectJpegLevel
from wsi_mil.tiling.regions import ReadPlan, Window, tile_window


def cuda_reason() -> str:
    """'' when a CUDA device can be used, else why not."""
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__}"
    return ""


class TorchTileReader:
    """Tiles decoded on ``device`` (nvJPEG on CUDA) from a direct tiled-JPEG level."""

    scale = 1

    def __init__(self, level: DirectJpegLevel, plan: ReadPlan, tile_size: int, device: str = "cuda") -> None:
        self.level, self.plan, self.tile_size = level, plan, tile_size
        self.device = torch.device(device)
        self.name = f"gpu-nvjpeg (torchvision {torchvision.__version__}, {device})"
        self.fallback_reason = ""
        self.thread_safe = True  # each call decodes its own batch; CUDA calls from threads are safe
        self._ds = int(round(plan.level_downsample))

    def _window(self, x: int, y: int) -> Window:
        if not self.plan.resample:
            s = self.tile_size
            return Window(x // self._ds, y // self._ds, s, s, (0.0, 0.0, float(s), float(s)))
        return tile_window(x, y, self.plan)

    def _decode(self, keys: list[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor | None]:
        """(col, row) -> (3, th, tw) uint8 on the device, None for absent tiles; one batched call."""
        streams, present = [], []
        for c, r in keys:
            data = self.level.tile_bytes(c, r)
            if data:
                streams.append(torch.frombuffer(bytearray(self.level.jpeg_stream(data)), dtype=torch.uint8))
                present.append((c, r))
        out: dict[tuple[int, int], torch.Tensor | None] = dict.fromkeys(keys)
        if streams:
            decoded = decode_jpeg(streams, mode=ImageReadMode.RGB, device=self.device)
            out.update(zip(present, decoded, strict=True))
        return out

    def read_tiles(self, coords: NDArray[np.int64], out: NDArray[np.uint8]) -> None:
        lay = self.level.layout
        tw, th = lay.tile_w, lay.tile_h
        wins = [self._window(int(x), int(y)) for x, y in coords]
        keys = sorted({(c, r) for w in wins
                       for r in range(max(w.y, 0) // th, min(w.y + w.height - 1, lay.height - 1) // th + 1)
                       for c in range(max(w.x, 0) // tw, min(w.x + w.width - 1, lay.width - 1) // tw + 1)})
        tiles = self._decode(keys)
        s = self.tile_size
        result = torch.empty((len(wins), 3, s, s), dtype=torch.uint8, device=self.device)
        for i, w in enumerate(wins):
            region = torch.full((3, w.height, w.width), 255, dtype=torch.uint8, device=self.device)
            x0, y0 = max(w.x, 0), max(w.y, 0)
            x1, y1 = min(w.x + w.width, lay.width), min(w.y + w.height, lay.height)
            for r in range(y0 // th, (y1 - 1) // th + 1) if y1 > y0 else ():
                for c in range(x0 // tw, (x1 - 1) // tw + 1) if x1 > x0 else ():
                    t = tiles.get((c, r))
                    if t is None:
                        continue
                    ax0, ax1 = max(x0, c * tw), min(x1, (c + 1) * tw)
                    ay0, ay1 = max(y0, r * th), min(y1, (r + 1) * th)
                    region[:, ay0 - w.y:ay1 - w.y, ax0 - w.x:ax1 - w.x] = \
                        t[:, ay0 - r * th:ay1 - r * th, ax0 - c * tw:ax1 - c * tw]
            result[i] = self._resample(region, w)
        out[...] = result.permute(0, 2, 3, 1).cpu().numpy()

    def _resample(self, region: torch.Tensor, w: Window) -> torch.Tensor:
        s = self.tile_size
        bx0, by0, bx1, by1 = w.box
        if (bx0, by0, bx1, by1) == (0.0, 0.0, float(s), float(s)) and region.shape[1:] == (s, s):
            return region
        crop = region[:, int(math.floor(by0)):int(math.ceil(by1)), int(math.floor(bx0)):int(math.ceil(bx1))]
        img = crop.unsqueeze(0).float()
        res = F.interpolate(img, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return res.round().clamp(0, 255).to(torch.uint8)[0]

    def close(self) -> None:
        self.level.close()


def open_gpu_reader(level: DirectJpegLevel, plan: ReadPlan, tile_size: int,
                    device: str = "cuda") -> tuple[TorchTileReader | None, str]:
    """The GPU reader, or (None, why not) when ``device`` is CUDA and none is usable."""
    if device.startswith("cuda"):
        why = cuda_reason() or rgb_reason(level)
        if why:
            return None, why
    return TorchTileReader(level, plan, tile_size, device), ""


def rgb_reason(level: DirectJpegLevel) -> str:
    """'' for YCbCr JPEG tiles; for RGB-coded ones (TIFF Photometric RGB, as in Aperio's SVS) why nvJPEG is not
    used: it decodes them as YCbCr despite their Adobe marker (wrong colours, mean error ~50 grey levels on
    CMU-1-Small-Region.svs, measured on an H200 with torchvision 0.26), where libjpeg-turbo honours it."""
    if level.layout.colorspace == "RGB":
        return "nvJPEG decodes this level's RGB-coded JPEG tiles (TIFF Photometric RGB) with wrong colours"
    return ""
