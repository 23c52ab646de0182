"""index.html: one static, self-contained cohort page (inline CSS and JS, no server, no network).

First a summary of the run (:mod:`~wsi_mil.heatmaps.summary`): out-of-fold slide AUC with its
confidence interval, the ROC curve (inline SVG), the confusion matrix at the run's threshold, class
counts and per-site figures. Then one table row per slide: slide id, label (when known), predicted class, probability of the
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
from urllib.parse import quote

import numpy as np

from wsi_mil.atomic import write_text_atomic
from wsi_mil.heatmaps.summary import CohortSummary

COLUMNS = ("Slide", "Label", "Predicted", "Probability", "Error", "Tiles", "Status", "Overlay", "Files")


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

    @property
    def error(self) -> bool | None:
        """True when the prediction differs from the known label; None when either is unknown."""
        if self.label is None or self.predicted is None:
            return None
        return self.label != self.predicted


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
tr[data-error="1"] td{background:#fff4e5}
tr[data-error="1"] td:first-child{border-left:4px solid #b00020}
.summary{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start;margin:0 0 18px}
.summary h2{font-size:15px;margin:0 0 6px}
.summary table{width:auto;font-size:13px}
.summary td,.summary th{padding:3px 8px;cursor:default;position:static}
.big{font-size:26px;font-weight:600}
.ci{color:#555}
svg.roc{border:1px solid #ccc;background:#fff}
.controls{margin:0 0 8px;font-size:14px}
.nerr{color:#b00020;font-weight:600}
a.viewer-link{display:none}
body.served a.viewer-link{display:block;font-weight:600}
body.only-errors tbody tr:not([data-error="1"]){display:none}
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
  if(location.protocol==='http:'||location.protocol==='https:'){document.body.classList.add('served');}
  var only=document.getElementById('only-errors');
  if(only){only.addEventListener('change',function(){document.body.classList.toggle('only-errors',only.checked);
    var shown=0;Array.prototype.forEach.call(table.tBodies[0].rows,function(r){if(r.offsetParent!==null){shown++;}});
    document.body.setAttribute('data-shown',String(shown));});}
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
    summary: CohortSummary | None = None,
    viewer_run: str | None = None,
    figures: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/index.html`` (atomic) for ``rows``; returns its path.

    Image and file paths in ``rows[i].files`` are relative to ``out_dir``; with ``embed`` the
    overlay pictures are inlined (the page then stands alone; the links still point to files).
    ``summary`` is drawn above the table; ``viewer_run`` (the page is ``JOB/heatmaps/{run}/``) adds
    links to the slides in ``wsi-mil view``. ``figures``: PNGs (relative to ``out_dir``) shown below
    the summary, e.g. a survival run's Kaplan-Meier curves.
    """
    out_dir = Path(out_dir)
    e = html.escape
    body = []
    for r in rows:
        prob_text, prob_sort = _fmt_prob(r.probability)
        files = "".join(f'<a href="{e(path)}">{e(name)}</a>' for name, path in r.files.items())
        if viewer_run is not None:
            href = f"../../slide/{quote(r.slide_id)}?run={quote(viewer_run)}"
            files = f'<a class="viewer-link" href="{e(href)}">open in viewer</a>' + files
        overlay = r.files.get("overlay.png")
        if overlay and (out_dir / overlay).is_file():
            img = (f'<a href="{e(overlay)}"><img src="{e(_image_src(out_dir, overlay, embed))}" '
                   f'alt="overlay of {e(r.slide_id)}"></a>')
        else:
            img = '<span class="noimg">no overlay</span>'
        status_cls = f"status-{e(r.status)}"
        mismatch = bool(r.error)
        wrong = ' class="wrong" title="prediction differs from the label"' if mismatch else ""
        err_text = {True: "yes", False: "no", None: ""}[r.error]
        err_attr = ' data-error="1"' if mismatch else ""
        n_tiles = "" if r.n_tiles is None else str(int(r.n_tiles))
        body.append(
            f'<tr class="{e(r.status)}" data-slide="{e(r.slide_id)}"{err_attr}>'
            f'<td data-sort="{e(r.slide_id)}">{e(r.slide_id)}</td>'
            f'<td data-sort="{e(r.label or "")}">{e(r.label or "")}</td>'
            f'<td data-sort="{e(r.predicted or "")}"{wrong}>{e(r.predicted or "")}</td>'
            f'<td class="num" data-sort="{prob_sort}">{prob_text}</td>'
            f'<td data-sort="{err_text}"{wrong}>{err_text}</td>'
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
        + summary_html(summary)
        + "".join(f'<p><img src="{e(_image_src(out_dir, f, embed))}" alt="{e(f)}" style="max-width:100%"></p>'
                  for f in figures if (out_dir / f).is_file())
        + controls_html(rows) +
        "<table id=\"slides\"><thead><tr>"
        + "".join(f'<th data-col="{c.lower()}">{c}</th>' for c in COLUMNS)
        + "</tr></thead>\n"
        "<tbody>\n" + "\n".join(body) + "\n</tbody></table>\n"
        f"<script>{JS}</script>\n</body></html>\n"
    )
    path = out_dir / filename
    write_text_atomic(path, page)
    return path


def controls_html(rows: Sequence[ReportRow]) -> str:
    """The count of misclassified slides and the "misclassified only" filter."""
    n_err = sum(bool(r.error) for r in rows)
    n_known = sum(r.error is not None for r in rows)
    return (f'<p class="controls"><span class="nerr" id="n-errors">{n_err}</span> of {n_known} slides with a known '
            'label are misclassified by the predictions below (the final model; the summary above is out-of-fold), '
            'highlighted in red · <label><input type="checkbox" id="only-errors"> '
            'misclassified only</label> · click a column header to sort</p>\n')


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def roc_svg(points: np.ndarray, size: int = 220) -> str:
    """The ROC curve ``points`` ((K, 2) false / true positive rates) as an inline SVG."""
    pad = 34
    inner = size - 2 * pad

    def xy(p: np.ndarray) -> str:
        return f"{pad + p[0] * inner:.1f},{pad + (1 - p[1]) * inner:.1f}"

    curve = " ".join(xy(p) for p in points)
    ticks = "".join(
        f'<text x="{pad + t * inner:.0f}" y="{size - pad + 14}" font-size="10" text-anchor="middle">{t:g}</text>'
        f'<text x="{pad - 4}" y="{pad + (1 - t) * inner + 3:.0f}" font-size="10" text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1))
    return (f'<svg class="roc" id="roc" width="{size}" height="{size}" viewBox="0 0 {size} {size}" '
            'xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad + inner}" x2="{pad + inner}" y2="{pad}" stroke="#bbb" stroke-dasharray="4 3"/>'
            f'<polyline points="{curve}" fill="none" stroke="#b00020" stroke-width="2"/>{ticks}'
            f'<text x="{size / 2:.0f}" y="{size - 4}" font-size="11" text-anchor="middle">false positive rate</text>'
            f'<text x="9" y="{size / 2:.0f}" font-size="11" text-anchor="middle" transform="rotate(-90 9 {size / 2:.0f})">'
            'true positive rate</text></svg>')


def summary_html(s: CohortSummary | None) -> str:
    """The summary block (AUC, ROC curve, confusion matrix, class counts, sites), or "" without one."""
    if s is None:
        return ""
    e = html.escape
    names = s.class_names
    ci = (f'<span class="ci">{s.ci_level:.0%} CI {_fmt(s.auc_ci[0])}–{_fmt(s.auc_ci[1])}</span>'
          if s.auc_ci else '<span class="ci">no confidence interval (too few slides of a class)</span>')
    auc_block = (f'<div id="auc"><h2>Out-of-fold slide AUC</h2><div class="big" id="auc-value">{_fmt(s.auc)}</div>'
                 f'{ci}<div class="ci">{s.n_oof} slides, each predicted by the fold model that did not train on it; '
                 f'positive class: {e(names[s.shown])}</div></div>')
    roc = (f'<div><h2>ROC curve ({e(names[s.shown])})</h2>{roc_svg(s.roc)}</div>' if len(s.roc)
           else "<div><h2>ROC curve</h2><p>needs slides of both classes</p></div>")
    head = "".join(f"<th>{e(c)}</th>" for c in names)
    body = "".join(f"<tr><th>{e(c)}</th>" + "".join(f'<td class="num">{int(v)}</td>' for v in s.confusion[i]) + "</tr>"
                   for i, c in enumerate(names))
    conf = (f'<div><h2>Confusion matrix</h2><table id="confusion"><tr><th>true \\ predicted</th>{head}</tr>{body}'
            f'</table><div class="ci">threshold: {e(s.threshold)}</div></div>')
    counts = "".join(f'<tr><th>{e(c)}</th><td class="num">{n}</td></tr>' for c, n in s.class_counts.items())
    count_block = f'<div><h2>Class counts</h2><table id="class-counts">{counts}</table></div>'
    site_block = ""
    if s.sites:
        site_rows = "".join(f'<tr><th>{e(f.site)}</th><td class="num">{f.n}</td><td class="num">{_fmt(f.auc)}</td>'
                            f'<td class="num">{_fmt(f.accuracy)}</td></tr>' for f in s.sites)
        site_block = (f'<div><h2>Per {e(s.site_column or "site")}</h2><table id="sites"><tr><th>{e(s.site_column or "site")}'
                      f'</th><th>slides</th><th>AUC</th><th>accuracy</th></tr>{site_rows}</table></div>')
    return f'<section class="summary" id="summary">{auc_block}{roc}{conf}{count_block}{site_block}</section>\n'
