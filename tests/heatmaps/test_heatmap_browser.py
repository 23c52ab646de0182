"""The cohort page index.html in headless Chromium (Debian's ``chromium``): loads from file://,
runs its script, shows every row and image, sorts, and renders a non-blank screenshot.

In CI (``CI=true``) a missing Chromium is a failure; on a developer machine the test skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.heatmaps.render import SlideArrays, render_slide
from wsi_mil.heatmaps.report import ReportRow, render_report_html

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--allow-file-access-from-files"]


def chromium() -> str:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; CI must install Debian's 'chromium' package (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); required in CI")


def run_chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    profile = tmp / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})


@pytest.fixture(scope="module")
def cohort_page(tmp_path_factory) -> Path:
    """A cohort page with two rendered slides, one without tissue and one failed slide."""
    out = tmp_path_factory.mktemp("heatmaps")
    rng = np.random.default_rng(3)
    rows = []
    w0, h0, size = 4000, 3000, 250.0
    ys, xs = np.meshgrid(np.arange(2, 10), np.arange(3, 13), indexing="ij")
    coords = np.stack([xs.ravel() * size, ys.ravel() * size], 1).astype(np.int64)
    thumb = np.full((300, 400, 3), 245, np.uint8)
    thumb[60:240, 80:320] = (210, 140, 190)
    for sid, prob, label, n in (("case-b", 0.91, "tumor", len(coords)), ("case-a", 0.12, "normal", len(coords)),
                                ("case-empty", None, "normal", 0)):
        c = coords[:n]
        s = rng.normal(size=n).astype(np.float32)
        sel = np.zeros(n, np.int8)
        if n:
            sel[np.argsort(-s)[:3]] = 1
            sel[np.argsort(s)[:3]] = -1
        probs = None if prob is None else np.array([1 - prob, prob])
        a = SlideArrays(sid, c, np.stack([-s, s], 1), np.stack([np.zeros(n), sel], 1), ["normal", "tumor"],
                        w0, h0, 0.5, size, thumbnail=thumb, probs=probs, label=label,
                        read_tiles=lambda idx: np.full((len(idx), 32, 32, 3), 180, np.uint8))
        m = render_slide(out / sid, a, 1)
        files = {f: f"{sid}/{f}" for f in m["files"]}
        rows.append(ReportRow(sid, "done", "; ".join(m["notes"]), label, m["predicted"], m["probability"],
                              m["n_tiles"], files))
    rows.append(ReportRow("case-missing", "failed", "JOB/patches/case-missing.zarr: patch store not found; run "
                          "'wsi-mil tile' first", "tumor"))
    return render_report_html(out, rows, "Heatmaps: test run", "run test · 4 slides")


def test_report_html_is_self_contained(cohort_page):
    text = cohort_page.read_text()
    assert "<script src" not in text and "<link" not in text and "http://" not in text and "https://" not in text
    assert text.count('<tr class=') == 4
    assert 'src="case-a/overlay.png"' in text and "patch store not found" in text


def test_report_embed_images_single_file(cohort_page, tmp_path):
    rows = [ReportRow("case-a", "done", files={"overlay.png": "case-a/overlay.png"})]
    path = render_report_html(cohort_page.parent, rows, "t", embed=True, filename="single.html")
    assert 'src="data:image/png;base64,' in path.read_text()


def test_report_in_headless_chromium(cohort_page, tmp_path):
    url = cohort_page.resolve().as_uri()
    dom = run_chromium(["--virtual-time-budget=10000", "--dump-dom", url + "#sort=probability-desc"], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    body = re.search(r"<body([^>]*)>", html).group(1)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body))
    assert attrs.get("data-ready") == "1", body
    assert attrs["data-rows"] == "4"
    assert attrs["data-images-loaded"] == "3" and attrs["data-images-failed"] == "0", body
    assert attrs["data-sorted"] == "probability-desc"
    order = re.findall(r'<tr class="[a-z]+" data-slide="([^"]+)"', html)
    assert order[:2] == ["case-b", "case-a"]  # sorted by probability, highest first
    assert set(order) == {"case-a", "case-b", "case-empty", "case-missing"}
    assert "no tissue detected" in html and "patch store not found" in html

    shot = tmp_path / "page.png"
    res = run_chromium(["--virtual-time-budget=5000", f"--screenshot={shot}", "--window-size=1400,1000", url], tmp_path)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1400, 1000)
        rgb = np.asarray(im.convert("RGB")).astype(np.float32)
    assert rgb.std() > 20  # not blank
    # the overlay pictures are painted: colours other than greys (the score map) are on screen
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    assert (sat > 60).mean() > 0.01
