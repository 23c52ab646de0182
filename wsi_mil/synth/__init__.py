"""Synthetic cohorts from real tissue, with ground truth (``wsi-mil synth``).

Slides are pyramidal JPEG TIFFs that OpenSlide opens like scanner files, textured with real H&E tissue
(the bundled CMU-1-Small-Region sample) under per-slide stain variation; positive slides carry a few
small lesions with denser, darker, larger nuclei whose polygons and masks are written beside them.

Public API: :func:`make_cohort`, :func:`make_slide`, :func:`load_lesion_mask`, :func:`lesion_fraction`,
:func:`load_tissue_mask`, :func:`load_lesion_polygons`, :func:`load_ground_truth`,
:func:`read_cohort_manifest`, :class:`SlideTruth`.
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "SlideTruth": "truth",
    "lesion_fraction": "truth",
    "load_ground_truth": "truth",
    "load_lesion_mask": "truth",
    "load_lesion_polygons": "truth",
    "load_tissue_mask": "truth",
    "make_cohort": "cohort",
    "make_slide": "slide",
    "read_cohort_manifest": "cohort",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
