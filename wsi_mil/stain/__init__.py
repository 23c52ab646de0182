"""Stain normalisation: per-slide fits, batched transforms on the extraction device.

- :mod:`~wsi_mil.stain.registry`: ``create_stain_normalizer(name)`` (``none``, ``macenko``, ``reinhard``).
- :mod:`~wsi_mil.stain.macenko`, :mod:`~wsi_mil.stain.reinhard`: the methods and their fixed targets.
- :mod:`~wsi_mil.stain.fit`: a patch store's deterministic sample of tissue tiles, fitted once per slide.
- :mod:`~wsi_mil.stain.transform`, :mod:`~wsi_mil.stain.color`: layouts, dtypes, colour mixing, CIELAB.
- :mod:`~wsi_mil.stain.base`: the fitted-transform base, optical density, :class:`StainFitError`.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "base": ("FittedStain", "StainFitError", "StainNormalizer", "optical_density"),
    "fit": ("SlideStain", "fit_store", "sample_pixels", "sample_tile_ids"),
    "macenko": ("MACENKO_REFERENCE", "Macenko", "MacenkoFit", "MacenkoTarget"),
    "registry": ("STAIN_METHODS", "create_stain_normalizer"),
    "reinhard": ("REINHARD_REFERENCE", "Reinhard", "ReinhardFit", "ReinhardTarget"),
})
