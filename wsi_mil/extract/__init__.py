"""Feature extraction: patch stores -> ``features/{encoder_id}/{slide_id}.h5`` (DESIGN.md).

- :mod:`~wsi_mil.extract.data`: whole storage chunks through a DataLoader (uint8, pinned).
- :mod:`~wsi_mil.extract.engine`: device-side preprocessing, autocast, OOM back-off.
- :mod:`~wsi_mil.extract.runner`: the in-process pipeline over slides on one device.
- :mod:`~wsi_mil.extract.stage`: the job-level stage (resume, run record, devices, Dask).
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "EncoderSpec": "stage",
    "ExtractConfig": "config",
    "ExtractReport": "stage",
    "InferenceEngine": "engine",
    "SlideJob": "runner",
    "resolve_devices": "stage",
    "resolve_precision": "engine",
    "run_extract": "stage",
    "run_slides": "runner",
    "stage_name": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
