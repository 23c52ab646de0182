"""The tile stage: slides -> tissue mask -> tile grid at an exact physical scale -> zarr patch stores.

- :mod:`~wsi_mil.tiling.config`: the ``tiling`` config section (:class:`TilingConfig`, :class:`TissueConfig`);
- :mod:`~wsi_mil.tiling.tissue`: tissue detection on a low-resolution image (pure numpy / scikit-image);
- :mod:`~wsi_mil.tiling.grid`: the tile grid from the mask and the slide's mpp (pure functions);
- :mod:`~wsi_mil.tiling.mpp`: each slide's scale: metadata, ``--mpp`` / ``--mpp-table`` fallbacks, ``--mpp-force``;
- :mod:`~wsi_mil.tiling.reuse`: whether existing stores fit this run's parameters (and which differ);
- :mod:`~wsi_mil.tiling.diagnose`: why a slide gave no tiles, and what to do;
- :mod:`~wsi_mil.tiling.stage`: :func:`run_tile` over a job folder, one Dask task per slide.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("TilingConfig", "TissueConfig"),
    "grid": ("TileGrid", "make_tile_grid"),
    "mpp": ("MppRequest", "read_mpp_table"),
    "reuse": ("check_existing_stores",),
    "stage": ("TileReport", "run_tile", "tile_one_slide"),
    "tissue": ("detect_tissue",),
})
