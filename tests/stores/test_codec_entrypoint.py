"""The ``wsi_mil.jpeg_tiles`` codec is registered through zarr's ``zarr.codecs`` entry-point group:
plain ``zarr.open_group`` reads a patch store in a process that never imports wsi_mil itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from wsi_mil.stores.codecs import JPEG_CODEC_NAME, JpegTilesCodec
from wsi_mil.stores.patches import write_patch_store

ATTRS = dict(slide_id="s", target_mpp=0.5, mpp=0.5, tile_size_level0=32.0, tile_size=32)


def test_entry_point_names_the_codec_class() -> None:
    found = {e.name: e for e in entry_points().select(group="zarr.codecs")}
    assert JPEG_CODEC_NAME in found, "reinstall the package: .venv/bin/pip install -e . --no-deps"
    assert found[JPEG_CODEC_NAME].load() is JpegTilesCodec


def test_plain_zarr_reads_a_store_in_a_fresh_process(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:32, :32]
    tiles = np.stack([np.stack([xx * 4 + i, yy * 4, xx + yy], -1) for i in range(20)]).astype(np.uint8)
    path = write_patch_store(tmp_path / "s.zarr", tiles, np.zeros((20, 2)), np.ones(20), np.eye(2), 8.0, ATTRS,
                             codec="jpeg", tiles_per_chunk=8, chunks_per_shard=2)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import zarr
        group = zarr.open_group({str(path)!r}, mode="r")
        tiles = np.asarray(group["tiles"][:])
        print(json.dumps({{"shape": list(tiles.shape), "mean": float(tiles.mean()),
                          "codec_module": sorted(m for m in sys.modules if m.startswith("wsi_mil"))}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [20, 32, 32, 3]
    assert abs(got["mean"] - float(tiles.mean())) < 3.0
    # the script never imported wsi_mil; zarr loaded the codec module through the entry point
    assert "wsi_mil.stores.codecs" in got["codec_module"]
