"""index.html: one static, self-contained cohort page (inline CSS and JS, no server, no network).

One table row per slide: slide id, label (when known), predicted class, probability of the
shown class, number of tiles, status (with the reason of a failure or a note such as "no
tissue"), the overlay picture and links to the slide's five outputs. Clicking a column header
sorts by it (numbers numerically, again to reverse); the order is kept in the address
(``index.html#sort=probability-desc``), so a sorted view can be bookmarked or shared. Images are referenced by relative path
(``{slide_id}/overlay.png``), so the folder can be moved or zipped as a whole and opened from
the file system; ``embed=True`` inlines them as data URIs for a single-file page instead.

When every image has loaded, the page's script sets ``data-images-loaded`` (count loaded),
``data-images-failed`` and ``data-ready="1"`` on ``<body>``: a headless browser check reads
them from the DOM.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wsi_mil.atomic import write_text_atomic

COLUMNS = ("Slide", "Label", "Predicted", "Probability", "Tiles", "Status", "Overlay", "Files")


@dataclass
class ReportRow:
    """What the cohort page shows for one slide."""

    slide_id: str
    status: str  # done / skipped / failed
    message: str = ""
    label: str | None = None
    predicted: str | None = None
    probability: float | None = None  # probability of the shown class
    n_tiles: int | None = None
    files: dict[str, str] = field(default_factory=dict)  # output name -> path relative to the page


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}
p.meta{color:#555;margin:0 0 16px;font-size:14px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{border-bottom:1px solid #ddd;padding:6px 10px;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0;white-space:nowrap}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td img{width:360px;max-width:40vw;border:1px solid #ccc;display:block}
tr.failed td{background:#fff2f2}
.status-failed{color:#b00020;font-weight:600}
.status-done,.status-skipped{color:#1b7f3b}
.msg{color:#555;font-size:12px;max-width:320px}
.files a{display:block;font-size:12px}
.noimg{color:#888;font-style:italic}
td.wrong{color:#b00020;font-weight:600}
"""

JS = """
(function(){
  function key(td){var v=td.getAttribute('data-sort');if(v===null){v=td.textContent;}
    if(v===''){return [2,''];}  // empty cells stay at the bottom in both directions
    var n=parseFloat(v);return (!isNaN(n)&&isFinite(v))?[0,n]:[1,v.toLowerCase()];}
  function cmp(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:a[1]>b[1]?1:0;}
  var table=document.getElementById('slides');
  var ths=table.tHead.rows[0].cells;
  function sortBy(i,asc){
    Array.prototype.forEach.call(ths,function(h){h.classList.remove('sorted-asc','sorted-desc');});
    ths[i].classList.add(asc?'sorted-asc':'sorted-desc');
    var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(r1,r2){var a=key(r1.cells[i]),b=key(r2.cells[i]);
      if(a[0]===2||b[0]===2){return a[0]===b[0]?0:(a[0]===2?1:-1);}
      var c=cmp(a,b);return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r);});
    document.body.setAttribute('data-sorted',ths[i].getAttribute('data-col')+'-'+(asc?'asc':'desc'));
  }
  Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('sorted-asc');sortBy(i,asc);
    if(history.replaceState){history.replaceState(null,'','#sort='+th.getAttribute('data-col')+'-'+(asc?'asc':'desc'));}
  });});
  var m=/^#sort=([a-z]+)-(asc|desc)$/.exec(location.hash);
  if(m){Array.prototype.forEach.call(ths,function(th,i){if(th.getAttribute('data-col')===m[1]){sortBy(i,m[2]==='asc');}});}
  function check(){
    var imgs=document.images,loaded=0,failed=0,pending=0;
    for(var i=0;i<imgs.length;i++){var im=imgs[i];
      if(!im.complete){pending++;}else if(im.naturalWidth>0){loaded++;}else{failed++;}}
    if(pending>0){setTimeout(check,50);return;}
    document.body.setAttribute('data-images-loaded',String(loaded));
    document.body.setAttribute('data-images-failed',String(failed));
    document.body.setAttribute('data-rows',String(table.tBodies[0].rows.length));
    document.body.setAttribute('data-ready','1');
  }
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""


def _fmt_prob(p: float | None) -> tuple[str, str]:
    if p is None or not math.isfinite(p):
        return "", ""
    return f"{p:.3f}", repr(float(p))


def _image_src(out_dir: Path, rel: str, embed: bool) -> str:
    if not embed:
        return rel
    data = (out_dir / rel).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_report_html(
    out_dir: str | Path,
    rows: Sequence[ReportRow],
    title: str,
    meta: str = "",
    embed: bool = False,
    filename: str = "index.html",
) -> Path:
    """Write ``out_dir/index.html`` (atomic) for ``rows``; returns its path.

    Image and file paths in ``rows[i].files`` are relative to ``out_dir``; with ``embed`` the
    overlay pictures are inlined (the page then stands alone; the links still point to files).
    """
    out_dir = Path(out_dir)
    e = html.escape
    body = []
    for r in rows:
        prob_text, prob_sort = _fmt_prob(r.probability)
        files = "".join(f'<a href="{e(path)}">{e(name)}</a>' for name, path in r.files.items())
        overlay = r.files.get("overlay.png")
        if overlay and (out_dir / overlay).is_file():
            img = (f'<a href="{e(overlay)}"><img src="{e(_image_src(out_dir, overlay, embed))}" '
                   f'alt="overlay of {e(r.slide_id)}"></a>')
        else:
            img = '<span class="noimg">no overlay</span>'
        status_cls = f"status-{e(r.status)}"
        mismatch = r.label is not None and r.predicted is not None and r.label != r.predicted
        wrong = ' class="wrong" title="prediction differs from the label"' if mismatch else ""
        n_tiles = "" if r.n_tiles is None else str(int(r.n_tiles))
        body.append(
            f'<tr class="{e(r.status)}" data-slide="{e(r.slide_id)}">'
            f'<td data-sort="{e(r.slide_id)}">{e(r.slide_id)}</td>'
            f'<td data-sort="{e(r.label or "")}">{e(r.label or "")}</td>'
            f'<td data-sort="{e(r.predicted or "")}"{wrong}>{e(r.predicted or "")}</td>'
            f'<td class="num" data-sort="{prob_sort}">{prob_text}</td>'
            f'<td class="num" data-sort="{n_tiles}">{n_tiles}</td>'
            f'<td data-sort="{e(r.status)}"><span class="{status_cls}">{e(r.status)}</span>'
            f'<div class="msg">{e(r.message)}</div></td>'
            f'<td data-sort="">{img}</td>'
            f'<td class="files" data-sort="">{files}</td></tr>'
        )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{e(title)}</title>"
        f"<style>{CSS}</style></head>\n<body>\n<h1>{e(title)}</h1><p class=\"meta\">{e(meta)}</p>\n"
        "<table id=\"slides\"><thead><tr>"
        + "".join(f'<th data-col="{c.lower()}">{c}</th>' for c in COLUMNS)
        + "</tr></thead>\n"
        "<tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
        f"<script>{JS}</script>\n</body></html>\n"
    )
    path = out_dir / filename
    write_text_atomic(path, page)
    return path
