"""HTML of the viewer's pages: the slide list, the viewer, and error pages (no external resources).

The viewer page loads OpenSeadragon and ``viewer.js`` from the package's own ``/static/`` files
and reads its slide from ``/api/slide/ID.json``; nothing comes from the network.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

#: the OpenSeadragon release shipped in static/openseadragon/ (see VENDORED.md there)
OSD_VERSION = "6.1.1"

BASE_CSS = ("body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fff}"
            "main{margin:24px}h1{font-size:20px;margin:0 0 8px}a{color:#0b57d0}"
            ".err{color:#b00020;white-space:pre-wrap;font-family:ui-monospace,monospace}")


def _shell(title: str, body: str, head: str = "") -> str:
    e = html.escape
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{BASE_CSS}</style>{head}</head>\n<body>{body}</body></html>\n")


def error_page(title: str, message: str) -> str:
    """A page saying what went wrong (``message`` is shown as text, escaped)."""
    e = html.escape
    return _shell(title, f"<main><h1>{e(title)}</h1><p class=\"err\" id=\"error\">{e(message)}</p>"
                         "<p><a href=\"/\">all slides of the job</a></p></main>")


def index_page(job: Path, slide_ids: Sequence[str], runs: Sequence[str], run: str | None) -> str:
    """The job's slides (links to the viewer) and its heatmap runs (links to their cohort pages)."""
    e = html.escape
    q = f"?run={quote(run)}" if run else ""
    items = "".join(f'<li><a href="/slide/{quote(s)}{q}">{e(s)}</a></li>' for s in slide_ids)
    pages = "".join(f'<li><a href="/heatmaps/{quote(r)}/index.html">{e(r)}</a></li>' for r in runs)
    shown = f"scores of run <b>{e(run)}</b>" if run else "no run chosen (slides only; pass --run to show scores)"
    body = (f"<main><h1>Job {e(job.name)}</h1><p>{shown}</p><h2>Slides</h2><ul id=\"slides\">{items}</ul>"
            + (f"<h2>Cohort pages</h2><ul id=\"runs\">{pages}</ul>" if runs else "") + "</main>")
    return _shell(f"wsi_mil viewer: {job.name}", body)


def viewer_page(slide_id: str, run: str | None) -> str:
    """The viewer of one slide; ``viewer.js`` fetches the slide's JSON and builds the layers."""
    e = html.escape
    config = json.dumps({"slide_id": slide_id, "run": run}).replace("</", "<\\/")
    head = '<link rel="stylesheet" href="/static/viewer.css">'
    body = (
        '<div id="bar"><a href="/">slides</a> <b id="title">' + e(slide_id) + "</b>"
        '<span id="layerctl"><label>score opacity <input id="opacity" type="range" min="0" max="1" step="0.05" '
        'value="0.5"></label><span id="cbar"><span id="cmin"></span><span id="cgrad"></span><span id="cmax"></span>'
        '</span><span id="cname"></span></span><span id="hover">hover a tile</span></div>'
        '<div id="side"><h2>Top tiles</h2><ol id="toplist"></ol><p id="legend"><span class="sw top"></span> selected '
        'top <span class="sw bottom"></span> selected bottom <span class="sw truth"></span> lesion (ground truth)</p>'
        '</div><div id="osd"></div>'
        f'<script src="/static/openseadragon/openseadragon.min.js?v={OSD_VERSION}"></script>'
        f"<script>window.WSI_VIEW_CONFIG={config};</script>"
        '<script src="/static/viewer.js"></script>'
    )
    return _shell(f"{slide_id} · wsi_mil viewer", body, head)
