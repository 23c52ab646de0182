"""``wsi-mil view``: a local web viewer of a job's slides with a heatmap run's tile scores.

Modules, one job each:

- :mod:`~wsi_mil.viewer.deepzoom`: Deep Zoom tiles read through :func:`wsi_mil.slide.open_slide`;
- :mod:`~wsi_mil.viewer.layer`: the score layer as RGBA tiles aligned with the slide's;
- :mod:`~wsi_mil.viewer.job`: the job's slides, heatmap runs, synthetic ground truth;
- :mod:`~wsi_mil.viewer.cache`: bounded caches (tiles by bytes, open slides by count);
- :mod:`~wsi_mil.viewer.page`, ``static/``: the pages, OpenSeadragon (shipped, pinned) and ``viewer.js``;
- :mod:`~wsi_mil.viewer.app`: the Starlette application; :mod:`~wsi_mil.viewer.server`: uvicorn.

Public API: :func:`create_app`, :func:`serve`, :class:`DeepZoom`.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "app": ("create_app",),
    "server": ("serve", "serve_in_thread"),
    "deepzoom": ("DeepZoom",),
})
