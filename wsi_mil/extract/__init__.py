"""Feature extraction: patch stores -> ``features/{encoder_id}/{slide_id}.h5`` (DESIGN.md).

- :mod:`~wsi_mil.extract.data`: whole storage chunks through a DataLoader (uint8, pinned).
- :mod:`~wsi_mil.extract.engine`: device-side preprocessing, autocast, OOM back-off.
- :mod:`~wsi_mil.extract.runner`: the in-process pipeline over slides on one device.
- :mod:`~wsi_mil.extract.stage`: the job-level stage (resume, run record, devices, Dask).
"""

from wsi_mil.extract.config import ExtractConfig
from wsi_mil.extract.engine import InferenceEngine, resolve_precision
from wsi_mil.extract.runner import SlideJob, run_slides
from wsi_mil.extract.stage import EncoderSpec, ExtractReport, extract_features, resolve_devices, stage_name

__all__ = [
    "EncoderSpec",
    "ExtractConfig",
    "ExtractReport",
    "InferenceEngine",
    "SlideJob",
    "extract_features",
    "resolve_devices",
    "resolve_precision",
    "run_slides",
    "stage_name",
]
