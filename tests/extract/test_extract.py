"""Extraction: row order against the store, attributes, resume, failures, OOM back-off, CLI."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsi_mil.cli import main
from wsi_mil.encoders import DataConfig, create_encoder, save_encoder_dir
from wsi_mil.errors import StoreError
from wsi_mil.extract import ExtractConfig, InferenceEngine, resolve_devices, run_extract
from wsi_mil.extract.data import TileRangeDataset
from wsi_mil.stores.features import is_complete_feature_file, read_feature_file
from wsi_mil.stores.patches import open_patch_store, write_patch_store

DATA_CONFIG = {"input_size": [3, 32, 32], "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.3],
               "interpolation": "bilinear"}


def colour_tiles(n: int, size: int, offset: int = 0) -> np.ndarray:
    """Tile i is one flat colour, different for every i: features then identify rows."""
    i = np.arange(offset, offset + n)
    rgb = np.stack([(i * 5) % 256, (i * 37 + 11) % 256, (i * 91 + 101) % 256], 1).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(rgb[:, None, None, :], (n, size, size, 3)))


def make_store(job: Path, slide_id: str, n: int, size: int = 32, chunk: int = 8, offset: int = 0) -> Path:
    coords = np.stack([np.arange(n) * 1000 + 7, np.arange(n) * 3 + offset], 1).astype(np.int64)
    attrs = dict(slide_id=slide_id, target_mpp=0.5, mpp=0.25, tile_size_level0=2.0 * size, tile_size=size,
                 slide_hash=f"sha256:{slide_id}", slide_path=f"/slides/{slide_id}.svs", mpp_source="metadata")
    return write_patch_store(job / "patches" / f"{slide_id}.zarr", colour_tiles(n, size, offset), coords,
                             np.ones(n, np.float32), np.ones((4, 4), np.uint8), 16.0, attrs,
                             codec="zstd", tiles_per_chunk=chunk, chunks_per_shard=2)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny test_resnet encoder folder with a 32 px input."""
    enc = create_encoder("test_resnet", "random:1")
    return save_encoder_dir(tmp_path_factory.mktemp("enc") / "tiny", enc.model, "test_resnet", DATA_CONFIG)


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path):
    return create_encoder(None, encoder_dir)


def reference(enc, tiles: np.ndarray) -> np.ndarray:
    """Each tile alone, preprocessed the textbook way (float on [0, 1], resize, normalise), on the CPU."""
    enc.model.cpu()  # an engine may have moved the model to the GPU
    out = []
    mean = torch.tensor(enc.data_config.mean).view(3, 1, 1)
    std = torch.tensor(enc.data_config.std).view(3, 1, 1)
    h, w = enc.input_size
    for t in tiles:
        x = torch.from_numpy(t).permute(2, 0, 1).float() / 255.0
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x[None], size=(h, w), mode="bilinear", antialias=True)[0]
        x = (x - mean) / std
        with torch.inference_mode():
            out.append(enc.model.float()(x[None].contiguous())[0].numpy())
    return np.stack(out)


CPU = ExtractConfig(device="cpu", batch_size=12, num_workers=0)


def test_features_follow_store_rows_and_record_attributes(job: Path, encoder) -> None:
    make_store(job, "s1", 37)
    make_store(job, "s2", 5, offset=100)
    report = run_extract(job, encoder, cfg=CPU)
    assert [s.status for s in report.statuses] == ["done", "done"]
    assert report.features_dir == job / "features" / encoder.encoder_id
    store = open_patch_store(job / "patches" / "s1.zarr")
    f = read_feature_file(report.features_dir / "s1.h5", encoder_id=encoder.encoder_id, embed_dim=96)
    assert f.features.shape == (37, 96) and f.features.dtype == np.float32
    np.testing.assert_array_equal(f.coords, store.coords)
    np.testing.assert_allclose(f.features, reference(encoder, store.read_tiles()), rtol=1e-4, atol=1e-4)
    # distinct colours give distinct rows: a permutation would be caught
    d = np.linalg.norm(f.features[:, None] - f.features[None], axis=-1)
    assert (d + np.eye(37) * 1e9).min() > 1e-3
    a = f.attrs
    assert a["encoder_id"] == encoder.encoder_id and a["timm_arch"] == "test_resnet"
    assert a["weights_hash"] == encoder.weights_hash and a["weights_source"].endswith("encoder.safetensors")
    assert a["embed_dim"] == 96 and a["input_size"] == [3, 32, 32]
    assert a["mean"] == DATA_CONFIG["mean"] and a["std"] == DATA_CONFIG["std"]
    assert a["patch_store"] == str((job / "patches" / "s1.zarr").resolve())
    assert a["patch_store_hash"].startswith("sha256") and a["slide_hash"] == "sha256:s1"
    assert a["mpp"] == 0.25 and a["target_mpp"] == 0.5 and a["tile_size"] == 32 and a["tile_size_level0"] == 64.0
    assert a["precision"] == "fp32" and a["extract_config"]["batch_size"] == 12 and a["n_tiles"] == 37
    g = read_feature_file(report.features_dir / "s2.h5")
    np.testing.assert_allclose(g.features, reference(encoder, colour_tiles(5, 32, 100)), rtol=1e-4, atol=1e-4)
    rows = list(csv.DictReader(open(report.record_path)))
    assert report.record_path == job / "status" / f"extract-{encoder.encoder_id}.csv"
    assert [(r["slide_id"], r["status"], r["n_tiles"]) for r in rows] == [("s1", "done", "37"), ("s2", "done", "5")]


def test_loader_workers_resize_and_float16(job: Path, encoder) -> None:
    make_store(job, "big", 21, size=48, chunk=4)
    cfg = ExtractConfig(device="cpu", batch_size=8, num_workers=2, features_dtype="float16")
    report = run_extract(job, encoder, cfg=cfg)
    assert report.statuses[0].status == "done"
    f = read_feature_file(report.features_dir / "big.h5", dtype=None)
    assert f.features.dtype == np.float16 and f.features.shape == (21, 96)
    ref = reference(encoder, colour_tiles(21, 48))
    np.testing.assert_allclose(f.features.astype(np.float32), ref, rtol=1e-2, atol=1e-2)


def test_empty_store_gives_an_empty_valid_file(job: Path, encoder) -> None:
    make_store(job, "a", 3)
    make_store(job, "empty", 0)
    make_store(job, "z", 2)
    report = run_extract(job, encoder, cfg=CPU)
    assert [(s.slide_id, s.status, s.n_tiles) for s in report.statuses] == [("a", "done", 3), ("empty", "done", 0),
                                                                          ("z", "done", 2)]
    f = read_feature_file(report.features_dir / "empty.h5")
    assert f.features.shape == (0, 96) and f.coords.shape == (0, 2)


def test_resume_skips_valid_files_and_redoes_bad_ones(job: Path, encoder) -> None:
    for sid in ("a", "b", "c", "d"):
        make_store(job, sid, 4)
    first = run_extract(job, encoder, cfg=CPU)
    out = first.features_dir
    assert {s.status for s in first.statuses} == {"done"}
    mtime = (out / "a.h5").stat().st_mtime_ns
    (out / "b.h5").write_bytes(b"not hdf5")  # corrupt
    import h5py

    with h5py.File(out / "c.h5", "r+") as h:  # partial: marked incomplete
        h.attrs["complete"] = False
    shutil.rmtree(job / "patches" / "d.zarr")  # re-tiled slide: the store changed
    make_store(job, "d", 6)
    (out / ".a.h5.tmp-1-deadbeef").write_bytes(b"")  # temporary of a killed run
    second = run_extract(job, encoder, cfg=CPU)
    assert [(s.slide_id, s.status) for s in second.statuses] == [("a", "skipped"), ("b", "done"), ("c", "done"),
                                                               ("d", "done")]
    assert (out / "a.h5").stat().st_mtime_ns == mtime
    assert all(is_complete_feature_file(out / f"{s}.h5") for s in "abcd")
    assert read_feature_file(out / "d.h5").n_tiles == 6
    assert not list(out.glob(".*tmp-*"))
    third = run_extract(job, encoder, cfg=CPU, overwrite=True)
    assert {s.status for s in third.statuses} == {"done"}
    # another encoder writes its own folder and record
    other = create_encoder("test_resnet", "random:2")
    other.data_config = DataConfig.from_dict(DATA_CONFIG)
    rep = run_extract(job, other, cfg=CPU, slides=["a"])
    assert rep.features_dir != out and rep.statuses[0].status == "done"


@pytest.mark.parametrize("loader", ["processes", "threads"])
def test_bad_store_fails_alone(job: Path, encoder, loader: str) -> None:
    make_store(job, "good", 10)
    bad = make_store(job, "bad", 40)
    shard = sorted(p for p in (bad / "tiles").rglob("*") if p.is_file() and p.name != "zarr.json")[1]
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, garbage: passes the manifest check
    (job / "patches" / "junk.zarr").mkdir()
    make_store(job, "later", 10, offset=20)
    cfg = ExtractConfig(device="cpu", batch_size=12, num_workers=2 if loader == "threads" else 0, loader=loader)
    report = run_extract(job, encoder, cfg=cfg)
    st = {s.slide_id: s for s in report.statuses}
    assert st["good"].status == "done" and st["later"].status == "done"
    f = read_feature_file(report.features_dir / "later.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(10, 32, 20)), rtol=1e-4, atol=1e-4)
    assert st["bad"].status == "failed" and "bad.zarr" in st["bad"].reason and "\n" not in st["bad"].reason
    assert st["junk"].status == "failed" and "junk.zarr" in st["junk"].reason
    assert not (report.features_dir / "bad.h5").exists()
    assert main(["extract", str(job), "--weights", str(report.features_dir.parent.parent / "x")]) == 2


class OomAbove(torch.nn.Module):
    """Raises CUDA OOM like a real GPU would when a batch is larger than ``limit``."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.calls = model, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated, batch {x.shape[0]})")
        return self.model(x)


def test_oom_halves_the_batch_and_keeps_every_row(encoder) -> None:
    tiles = torch.from_numpy(colour_tiles(23, 32))
    wrapper = OomAbove(encoder.model, limit=5)
    engine = InferenceEngine(wrapper, encoder.data_config, "cpu", batch_size=16)
    out = engine.embed(tiles).numpy()
    assert engine.batch_size == 4 and engine.oom_retries == 2
    assert wrapper.calls[:3] == [16, 8, 4] and max(wrapper.calls[3:]) == 4
    np.testing.assert_allclose(out, reference(encoder, tiles.numpy()), rtol=1e-4, atol=1e-4)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        InferenceEngine(OomAbove(encoder.model, limit=0), encoder.data_config, "cpu", batch_size=4).embed(tiles)


def test_oom_back_off_through_the_stage(job: Path, encoder) -> None:
    make_store(job, "s", 30)
    import copy

    enc = copy.copy(encoder)
    enc.model = OomAbove(encoder.model, limit=7)
    report = run_extract(job, enc, cfg=ExtractConfig(device="cpu", batch_size=32, num_workers=0))
    assert report.statuses[0].status == "done"
    f = read_feature_file(report.features_dir / "s.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(30, 32)), rtol=1e-4, atol=1e-4)


def test_cli_extract(job: Path, encoder_dir: Path, encoder, capsys: pytest.CaptureFixture) -> None:
    make_store(job, "s", 9)
    argv = ["extract", str(job), "--weights", str(encoder_dir), "--device", "cpu", "--batch-size", "4",
            "--num-workers", "0"]
    assert main(argv) == 0
    assert (job / "features" / encoder.encoder_id / "s.h5").is_file()
    assert main(argv) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert main(["extract", str(job), "--weights", "random", "--device", "cpu"]) == 2
    assert "--encoder" in capsys.readouterr().err
    assert main(["extract", str(job / "nothing"), "-e", "test_resnet", "-w", "random"]) == 2
    assert "no patch stores" in capsys.readouterr().err
    assert main(["extract", str(job), "-e", "test_resnet", "-w", "random", "--set", "batch_size=0"]) == 2
    assert main(["extract", str(job), "-e", "test_resnet", "-w", "random", "--device", "tpu"]) == 2
    assert main(["extract", str(job), "--list-encoders"]) == 0
    assert "resnet50_trunc" in capsys.readouterr().out


def test_resolve_devices() -> None:
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices("cpu,cpu") == [torch.device("cpu")] * 2
    assert resolve_devices("auto")[0].type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.slow
def test_several_devices_run_one_process_each(job: Path, encoder_dir: Path, encoder) -> None:
    """Two 'devices' (CPU here, GPUs on a GPU node) in spawned processes share the slides."""
    for i, n in enumerate((12, 3, 7)):
        make_store(job, f"s{i}", n, offset=10 * i)
    seen = []
    report = run_extract(job, None, encoder_dir, ExtractConfig(device="cpu,cpu", batch_size=8, num_workers=0),
                              on_done=seen.append)
    assert [(s.slide_id, s.status) for s in report.statuses] == [("s0", "done"), ("s1", "done"), ("s2", "done")]
    assert len(seen) == 3
    f = read_feature_file(report.features_dir / "s2.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(7, 32, 20)), rtol=1e-4, atol=1e-4)


def test_dask_scheduler_runs_one_task_per_slide(job: Path, encoder_dir: Path, encoder) -> None:
    from distributed import LocalCluster

    make_store(job, "a", 5)
    make_store(job, "b", 9, offset=50)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        report = run_extract(job, None, encoder_dir, ExtractConfig(device="cpu", batch_size=4),
                                  scheduler=cluster.scheduler_address)
    assert [(s.slide_id, s.status) for s in report.statuses] == [("a", "done"), ("b", "done")]
    f = read_feature_file(report.features_dir / "b.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(9, 32, 50)), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_device_path_bf16_channels_last(job: Path) -> None:
    """The CUDA path (bf16 autocast, channels_last, pinned memory, loader workers); CPU if no GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = create_encoder("test_resnet", "random:4")
    make_store(job, "g", 40, size=64, chunk=8)
    cfg = ExtractConfig(device=device, batch_size=16, precision="bf16", channels_last=True, num_workers=2)
    report = run_extract(job, enc, cfg=cfg)
    assert report.statuses[0].status == "done", report.statuses[0].reason
    f = read_feature_file(report.features_dir / "g.h5")
    assert f.attrs["precision"] == "bf16" and f.attrs["device"].startswith(device)
    ref = reference(enc, colour_tiles(40, 64))
    cos = (f.features * ref).sum(1) / (np.linalg.norm(f.features, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.98, cos.min()
    if device == "cuda":
        engine = InferenceEngine(enc.model, enc.data_config, device, batch_size=8, precision="auto")
        assert engine.precision in ("bf16", "fp16")
        x = engine.preprocess(torch.from_numpy(colour_tiles(2, 64)).to(device))
        assert x.is_contiguous(memory_format=torch.channels_last)


def _crash_in_worker(self, i):  # replaces TileRangeDataset.__getitem__ in the forked loader worker
    import os

    from torch.utils.data import get_worker_info

    if self.ranges[i].path.endswith("crash.zarr") and get_worker_info() is not None:
        os._exit(3)  # like a segfault in a codec: the worker dies without a Python exception
    return _ORIGINAL_GETITEM(self, i)


_ORIGINAL_GETITEM = TileRangeDataset.__getitem__


def test_a_dying_loader_worker_fails_one_slide_and_the_rest_carry_on(job: Path, encoder,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(job, "a", 9)
    make_store(job, "crash", 9)
    make_store(job, "empty", 0)
    make_store(job, "z", 9, offset=30)
    monkeypatch.setattr(TileRangeDataset, "__getitem__", _crash_in_worker)
    report = run_extract(job, encoder, cfg=ExtractConfig(device="cpu", batch_size=8, num_workers=1))
    st = {s.slide_id: s for s in report.statuses}
    assert st["a"].status == "done" and st["empty"].status == "done" and st["z"].status == "done"
    assert st["crash"].status == "failed" and "loader process died" in st["crash"].reason
    f = read_feature_file(report.features_dir / "z.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(9, 32, 30)), rtol=1e-4, atol=1e-4)


def test_reads_group_whole_chunks_up_to_the_batch() -> None:
    from wsi_mil.extract.data import plan_ranges

    chunks = [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert [(r.start, r.stop) for r in plan_ranges(0, "s", chunks, 16, 32)] == [(0, 16), (16, 30)]
    assert [(r.start, r.stop) for r in plan_ranges(0, "s", chunks, 5, 32)] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert [(r.start, r.stop) for r in plan_ranges(2, "s", chunks, 100, 32)] == [(0, 30)]
    assert plan_ranges(0, "s", [], 16, 32) == []
    with pytest.raises(StoreError, match="s: no tile size"):  # the tile size is given, never guessed
        plan_ranges(0, "s", chunks, 16, 0)


@pytest.mark.gpu
def test_compiled_engine_matches_eager() -> None:
    """``torch.compile`` path: same features as eager, the last partial batch padded (no recompile)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = create_encoder("test_resnet", "random:6")
    tiles = torch.from_numpy(colour_tiles(21, 64))
    eager = InferenceEngine(enc.model, enc.data_config, device, batch_size=8, precision="fp32")
    compiled = InferenceEngine(enc.model, enc.data_config, device, batch_size=8, precision="fp32", compile=True)
    a, b = eager.embed(tiles).cpu().numpy(), compiled.embed(tiles).cpu().numpy()
    assert b.shape == (21, 96)
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3)


def test_loader_processes_fit_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import collections

    from wsi_mil.extract import data

    usage = collections.namedtuple("usage", "total used free")
    item = 512 * 224 * 224 * 3  # one batch of 224 px tiles: 77 MB
    monkeypatch.setattr(data.shutil, "disk_usage", lambda p: usage(64 << 20, 0, 64 << 20))  # docker default
    assert data.fit_workers_to_shm(15, 2, item) == 0
    monkeypatch.setattr(data.shutil, "disk_usage", lambda p: usage(1 << 30, 0, 1 << 30))
    assert data.fit_workers_to_shm(15, 2, item) == 3
    monkeypatch.setattr(data.shutil, "disk_usage", lambda p: usage(64 << 30, 0, 64 << 30))
    assert data.fit_workers_to_shm(15, 2, item) == 15
    assert data.fit_workers_to_shm(0, 2, item) == 0


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_both_loaders_give_the_same_features(job: Path, encoder, mode: str) -> None:
    make_store(job, "a", 20)
    make_store(job, "b", 0)
    make_store(job, "c", 13, offset=40)
    report = run_extract(job, encoder, cfg=ExtractConfig(device="cpu", batch_size=8, loader=mode,
                                                             num_workers=2))
    assert [s.status for s in report.statuses] == ["done"] * 3
    f = read_feature_file(report.features_dir / "c.h5")
    np.testing.assert_allclose(f.features, reference(encoder, colour_tiles(13, 32, 40)), rtol=1e-4, atol=1e-4)
    assert read_feature_file(report.features_dir / "b.h5").n_tiles == 0


def test_threaded_loader_reports_a_damaged_store(job: Path) -> None:
    from wsi_mil.extract.data import ThreadedTileLoader, TileRange

    make_store(job, "a", 8)
    ranges = [TileRange(0, str(job / "patches" / "a.zarr"), 0, 8, 32),
              TileRange(1, str(job / "patches" / "nope.zarr"), 0, 4, 32)]
    out = list(ThreadedTileLoader(ranges, threads=2))
    assert [b.slide for b in out] == [0, 1] and out[0].tiles.shape[0] == 8
    assert out[1].tiles is None and "patch store not found" in out[1].error


def test_threaded_loader_decodes_chunks_in_parallel_into_a_ring_of_buffers(job: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows in store order across many batches, two tile sizes, and fewer buffers than batches;
    each store opened once per loader (not once per thread)."""
    import wsi_mil.stores.patches as patches
    from wsi_mil.extract.data import ThreadedTileLoader, plan_ranges

    paths = [make_store(job, "a", 45, size=32, chunk=4), make_store(job, "b", 30, size=48, chunk=4, offset=60)]
    opened: list[str] = []
    real_open = patches.open_patch_store
    monkeypatch.setattr(patches, "open_patch_store", lambda p: opened.append(str(p)) or real_open(p))
    ranges = []
    for i, p in enumerate(paths):
        store = real_open(p)
        ranges += plan_ranges(i, p, store.chunk_ranges(), 8, store.tile_size)
    assert all(len(r.pieces()) == 2 for r in ranges[:-1])
    loader = ThreadedTileLoader(ranges, threads=3, prefetch=2)
    assert 2 <= loader.buffers < len(ranges)
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    buffers: dict[int, set[int]] = {0: set(), 1: set()}  # the larger tiles of b need larger buffers
    for batch in loader:
        assert not batch.error
        buffers[batch.slide].add(batch.tiles.untyped_storage().data_ptr())
        got[batch.slide].append(batch.tiles.numpy().copy())  # valid until the next batch is asked for
    np.testing.assert_array_equal(np.concatenate(got[0]), colour_tiles(45, 32))
    np.testing.assert_array_equal(np.concatenate(got[1]), colour_tiles(30, 48, 60))
    assert len(buffers[0]) <= loader.buffers and len(buffers[1]) <= loader.buffers
    assert sorted(opened) == sorted(str(p) for p in paths)


@pytest.mark.gpu
def test_ring_buffers_and_side_stream_copies_keep_every_row(job: Path) -> None:
    """Many small batches through the threaded loader's ring (refilled many times) and the engine's
    copy stream with at most 2 batches in flight: every row is its own tile's feature (a buffer
    refilled before its copy finished would show another tile's). CPU when no GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    enc = create_encoder("test_resnet", "random:8")
    make_store(job, "r", 300, size=32, chunk=4)
    make_store(job, "s", 77, size=32, chunk=4, offset=400)
    engine = InferenceEngine(enc.model, enc.data_config, device, batch_size=8, precision="fp32", max_in_flight=2)
    from wsi_mil.extract.runner import run_slides
    from wsi_mil.extract.stage import prepare_slides

    stores = [(job / "patches" / f"{s}.zarr", job / f"{s}.h5") for s in ("r", "s")]
    jobs = prepare_slides(stores, "ring")
    statuses = run_slides(engine, jobs, {"encoder_id": "ring"}, 96, lambda s: None, num_workers=4, loader="threads")
    assert [s.status for s in statuses] == ["done", "done"], statuses
    assert len(engine._in_flight) <= 2
    enc.model.cpu()
    for name, n, offset in (("r", 300, 0), ("s", 77, 400)):
        got = read_feature_file(job / f"{name}.h5").features
        ref = reference(enc, colour_tiles(n, 32, offset))
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.999, (name, cos.min())
