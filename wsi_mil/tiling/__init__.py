"""The tile stage: slides -> tissue mask -> tile grid at an exact physical scale -> zarr patch stores.

- :mod:`~wsi_mil.tiling.config`: the ``tiling`` config section (:class:`TilingConfig`, :class:`TissueConfig`);
- :mod:`~wsi_mil.tiling.tissue`: tissue detection on a low-resolution image (pure numpy / scikit-image);
- :mod:`~wsi_mil.tiling.grid`: the tile grid from the mask and the slide's mpp (pure functions);
- :mod:`~wsi_mil.tiling.stage`: :func:`run_tile` over a job folder, one Dask task per slide.
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "TileGrid": "grid",
    "TilingConfig": "config",
    "TissueConfig": "config",
    "detect_tissue": "tissue",
    "make_tile_grid": "grid",
    "run_tile": "stage",
    "tile_one_slide": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
