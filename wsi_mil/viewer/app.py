"""The viewer's web application (Starlette): pages, Deep Zoom image and score tiles, cohort pages.

Routes (``RUN`` a heatmap run of the job, ``ID`` a slide id of the job; both looked up in lists
made from the job folder, never used as paths):

- ``/``: the job's slides, with links to the viewer and to each run's cohort page;
- ``/slide/ID?run=RUN``: the viewer page (an error page when the slide cannot be opened);
- ``/api/slide/ID.json?run=RUN``: slide size, Deep Zoom geometry, tile scores, colour bar, ground truth;
- ``/tiles/ID/LEVEL/COL_ROW.jpeg``: slide tiles; ``/overlay/RUN/ID/LEVEL/COL_ROW.png``: score tiles (RGBA);
- ``/heatmaps/...``: the files of ``JOB/heatmaps`` (cohort pages), ``/static/...``: the viewer's scripts.

File routes are Starlette ``StaticFiles`` (resolved paths must stay inside their folder; symlinks
out of it are refused). Tiles are made on demand and kept in a cache bounded by bytes.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from wsi_mil.errors import WsiMilError
from wsi_mil.jobdir import HEATMAPS
from wsi_mil.slide import open_slide
from wsi_mil.viewer.cache import ByteLRU, HandleLRU
from wsi_mil.viewer.deepzoom import DeepZoom, TileAddressError
from wsi_mil.viewer.job import SlideEntry, ViewerError, choose_run, ground_truth_polygons, list_runs, list_slides, load_layer
from wsi_mil.viewer.layer import ScoreLayer
from wsi_mil.viewer.page import error_page, index_page, viewer_page

STATIC_DIR = Path(__file__).parent / "static"
JPEG_QUALITY = 80
log = logging.getLogger("wsi_mil.viewer")


@dataclass
class ViewerState:
    """The job being served and the server's caches."""

    job: Path
    run: str | None
    cache: ByteLRU
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    open_slides: HandleLRU[DeepZoom] = field(default_factory=lambda: HandleLRU(8))
    layers: dict[tuple[str, str], ScoreLayer | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slide(self, slide_id: str) -> SlideEntry:
        entry = self.slides.get(slide_id)
        if entry is None:
            raise HTTPException(404, f"no slide '{slide_id}' in this job")
        return entry

    def deepzoom(self, slide_id: str) -> DeepZoom:
        """The open Deep Zoom pyramid of a slide (ViewerError when the slide cannot be opened)."""
        entry = self.slide(slide_id)
        return self.open_slides.get_or_open(slide_id, lambda: DeepZoom(open_slide(entry.slide_path, mpp=entry.mpp)))

    def run_of(self, request: Request) -> str | None:
        """The run named by ``?run=`` (one of the job's runs), else the server's run."""
        name = request.query_params.get("run")
        if not name:
            return self.run
        if name not in list_runs(self.job):
            raise HTTPException(404, f"no heatmap run '{name}' in this job")
        return name

    def layer(self, run: str | None, slide_id: str) -> ScoreLayer | None:
        if run is None:
            return None
        key = (run, slide_id)
        with self.lock:
            if key not in self.layers:
                self.layers[key] = load_layer(self.job, run, slide_id)
            return self.layers[key]


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _tile_address(request: Request) -> tuple[int, int, int]:
    p = request.path_params
    return int(p["level"]), int(p["col"]), int(p["row"])


def create_app(job: str | Path, run: str | None = None, cache_mb: float = 128.0) -> Starlette:
    """The viewer application over ``job`` showing heatmap run ``run`` (default: the only one)."""
    job = Path(job)
    if not job.is_dir():
        raise ViewerError(f"{job}: job folder not found")
    state = ViewerState(job.resolve(), choose_run(job, run), ByteLRU(int(cache_mb * 2**20)))
    state.slides = list_slides(job)
    if not state.slides:
        raise ViewerError(f"{job}: no complete patch stores in {job / 'patches'}; run 'wsi-mil tile' first")

    def home(request: Request) -> Response:
        return HTMLResponse(index_page(state.job, sorted(state.slides), list_runs(state.job), state.run))

    def slide_page(request: Request) -> Response:
        sid = request.path_params["slide_id"]
        state.slide(sid)
        run_name = state.run_of(request)
        try:
            state.deepzoom(sid)
        except WsiMilError as exc:
            return HTMLResponse(error_page(f"Cannot open slide {sid}", str(exc)), status_code=500)
        return HTMLResponse(viewer_page(sid, run_name))

    def slide_info(request: Request) -> Response:
        sid = request.path_params["slide_id"]
        entry = state.slide(sid)
        run_name = state.run_of(request)
        try:
            dz = state.deepzoom(sid)
        except WsiMilError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)
        info: dict[str, Any] = {
            "slide_id": sid, "width": dz.width, "height": dz.height, "tile_size": dz.tile_size, "overlap": dz.overlap,
            "max_level": dz.level_count - 1, "mpp": entry.mpp, "run": run_name, "layer": None,
            "truth": ground_truth_polygons(entry),
        }
        layer = state.layer(run_name, sid)
        if layer is not None:
            info["layer"] = {
                "class_name": layer.class_name, "vmin": layer.vmin, "vmax": layer.vmax, "colour_bar": layer.colour_bar(),
                "tile_size0": layer.tile_size0, "step0": layer.step0, "x": layer.coords[:, 0].tolist(),
                "y": layer.coords[:, 1].tolist(), "score": [round(float(v), 6) for v in layer.scores],
                "selected": layer.selected.astype(int).tolist(),
            }
        return JSONResponse(info)

    def image_tile(request: Request) -> Response:
        sid = request.path_params["slide_id"]
        level, col, row = _tile_address(request)
        state.slide(sid)

        def make() -> bytes:
            return _encode(state.deepzoom(sid).tile(level, col, row), "jpeg")

        return Response(state.cache.get_or_make(("img", sid, level, col, row), make), media_type="image/jpeg")

    def overlay_tile(request: Request) -> Response:
        sid, run_name = request.path_params["slide_id"], request.path_params["run"]
        level, col, row = _tile_address(request)
        state.slide(sid)
        if run_name not in list_runs(state.job):
            raise HTTPException(404, f"no heatmap run '{run_name}' in this job")
        layer = state.layer(run_name, sid)
        if layer is None:
            raise HTTPException(404, f"run '{run_name}' has no heatmap of slide '{sid}'")

        def make() -> bytes:
            info = state.deepzoom(sid).tile_info(level, col, row)
            return _encode(layer.tile_rgba(info), "png")

        return Response(state.cache.get_or_make(("ovl", run_name, sid, level, col, row), make), media_type="image/png")

    async def http_error(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 500)
        detail = str(getattr(exc, "detail", exc))
        if request.url.path.startswith(("/tiles/", "/overlay/", "/api/")):
            return Response(detail + "\n", status_code=code, media_type="text/plain")
        return HTMLResponse(error_page("Not found" if code == 404 else "Error", detail), status_code=code)

    async def wsi_error(request: Request, exc: Exception) -> Response:
        status = 400 if isinstance(exc, TileAddressError) else 500
        if request.url.path.startswith(("/tiles/", "/overlay/", "/api/")):
            return Response(str(exc) + "\n", status_code=status, media_type="text/plain")
        return HTMLResponse(error_page("Error", str(exc)), status_code=status)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error serving %s", request.url.path)
        return HTMLResponse(error_page("Internal error", f"{type(exc).__name__}: {exc}"), status_code=500)

    heatmaps = state.job / HEATMAPS
    routes = [
        Route("/", home),
        Route("/slide/{slide_id}", slide_page),
        Route("/api/slide/{slide_id}.json", slide_info),
        Route("/tiles/{slide_id}/{level:int}/{col:int}_{row:int}.jpeg", image_tile),
        Route("/overlay/{run}/{slide_id}/{level:int}/{col:int}_{row:int}.png", overlay_tile),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if heatmaps.is_dir():
        routes.append(Mount("/heatmaps", app=StaticFiles(directory=heatmaps, html=True), name="heatmaps"))
    app = Starlette(routes=routes, exception_handlers={
        HTTPException: http_error, WsiMilError: wsi_error, Exception: server_error,
    })
    app.state.viewer = state
    return app

