"""Synthetic cohorts from real tissue, with ground truth (``wsi-mil synth``).

Slides are pyramidal JPEG TIFFs that OpenSlide opens like scanner files, textured with real H&E tissue
(the bundled CMU-1-Small-Region sample) under per-slide stain variation; positive slides carry a few
small lesions with denser, darker, larger nuclei whose polygons and masks are written beside them.

Public API: :func:`make_cohort`, :func:`make_slide`, :func:`load_lesion_mask`, :func:`lesion_fraction`,
:func:`load_tissue_mask`, :func:`load_lesion_polygons`, :func:`load_ground_truth`,
:func:`read_cohort_manifest`, :class:`SlideTruth`; :func:`write_dicom_pyramid` (a DICOM whole-slide series of an image,
for the DICOM readers' tests and benchmarks).
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "cohort": ("make_cohort", "read_cohort_manifest"),
    "dicom": ("write_dicom_pyramid",),
    "slide": ("make_slide",),
    "truth": ("SlideTruth", "lesion_fraction", "load_ground_truth", "load_lesion_mask", "load_lesion_polygons", "load_tissue_mask"),
})
