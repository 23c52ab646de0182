"""Feature extraction: patch stores -> ``features/{encoder_id}/{slide_id}.h5`` (DESIGN.md).

- :mod:`~wsi_mil.extract.data`: whole storage chunks through a DataLoader (uint8, pinned).
- :mod:`~wsi_mil.extract.engine`: device-side preprocessing, autocast, OOM back-off.
- :mod:`~wsi_mil.extract.runner`: the in-process pipeline over slides on one device.
- :mod:`~wsi_mil.extract.stage`: the job-level stage (resume, run record, devices, Dask).
- :mod:`~wsi_mil.extract.memory`: the device-memory estimate printed before a run.
- :mod:`~wsi_mil.extract.importer`: TRIDENT / CLAM / STAMP feature files -> our contract.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("ExtractConfig",),
    "engine": ("InferenceEngine", "resolve_precision"),
    "importer": ("ImportReport", "import_features", "read_peer_file"),
    "memory": ("MemoryEstimate", "estimate_memory"),
    "runner": ("SlideJob", "run_slides"),
    "stage": ("EncoderSpec", "ExtractReport", "resolve_devices", "run_extract", "stage_name"),
})
