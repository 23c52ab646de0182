"""Heatmaps a pathologist can open: per-tile MIL scores -> pictures, QuPath layers, a cohort page.

Modules, one job each:

- :mod:`~wsi_mil.heatmaps.scoremap`: tile scores -> score grid at tile resolution (level-0 geometry);
- :mod:`~wsi_mil.heatmaps.overlay`: overlay.png (thumbnail, scores, tissue outline, selected tiles);
- :mod:`~wsi_mil.heatmaps.geojson`: tiles.geojson (QuPath tile objects with score measurements);
- :mod:`~wsi_mil.heatmaps.ometiff`: overlay.ome.tif (tiled pyramidal OME-TIFF aligned to the slide);
- :mod:`~wsi_mil.heatmaps.montage`: top_tiles.png; :mod:`~wsi_mil.heatmaps.table`: scores.csv;
- :mod:`~wsi_mil.heatmaps.report`: index.html (self-contained, sortable cohort page);
- :mod:`~wsi_mil.heatmaps.render`: all five outputs of one slide from plain arrays;
- :mod:`~wsi_mil.heatmaps.stage`: the ``heatmap`` stage over a model run and a job folder.

Public API: :func:`run_heatmap`, :class:`HeatmapConfig`, :func:`render_slide`, :class:`SlideArrays`.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("HeatmapConfig",),
    "render": ("RenderOptions", "SlideArrays", "render_slide"),
    "stage": ("run_heatmap",),
})
