"""The viewer and the cohort page in headless Chromium (Debian's ``chromium``, driven by Playwright).

One browser session: the viewer loads, zooms to full resolution, the tile under a chosen screen point
is the one whose coordinates the page reports (the slide's cells have their own colours, read back
from the screen), the score layer's colour on screen follows the tile's score, the top-tile list
jumps to a tile, selected tiles and ground truth are drawn; the cohort page sorts and filters.
With ``WSI_MIL_DOCS_SCREENSHOTS=DIR`` the screenshots are also written to DIR (docs/).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_data import CELL, RUN, decode_cell, tile_scores

from wsi_mil.viewer.app import create_app
from wsi_mil.viewer.layer import colour_table
from wsi_mil.viewer.server import serve_in_thread

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str:
    path = shutil.which(CHROMIUM) or shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; CI must install Debian's 'chromium' package (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (apt-get install -y chromium); required in CI")


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu", "--disable-quic"])
        yield b
        b.close()


def screen(page) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)


def save_doc_shot(page, name: str) -> None:
    out = os.environ.get("WSI_MIL_DOCS_SCREENSHOTS")
    if out:
        page.screenshot(path=str(Path(out) / name))


def settle(page) -> None:
    """Wait until OpenSeadragon has finished animating and every layer is fully loaded."""
    page.wait_for_function("() => !wsiView.viewer.viewport.getZoom(false) || "
                           "(Math.abs(wsiView.viewer.viewport.getZoom(false) - wsiView.viewer.viewport.getZoom(true)) < 1e-9"
                           " && wsiView.loaded())", timeout=30000)
    page.wait_for_timeout(300)  # one more frame drawn after the last tile arrived


def test_viewer_in_chromium(browser, viewer_job):
    app = create_app(viewer_job)
    state = app.state.viewer
    with serve_in_thread(app) as url:
        page = browser.new_page(viewport={"width": 1200, "height": 800}, device_scale_factor=1)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/slide/s1")
        page.wait_for_selector("body[data-ready='1']", timeout=60000)
        assert page.locator(".tile-mark.top").count() == 3 and page.locator(".tile-mark.bottom").count() == 3
        assert page.get_attribute("body", "data-truth-polygons") == "1"
        assert page.locator("#toplist li").count() == 20
        info = page.evaluate("wsiView.info")
        top_level = info["max_level"]
        save_doc_shot(page, "viewer_slide.png")

        # zoom to full resolution (one screen pixel = one level-0 pixel) around level-0 (700, 600), scores hidden
        page.evaluate("""() => { const v = wsiView.viewer, it = v.world.getItemAt(0); wsiView.setOpacity(0);
            v.viewport.zoomTo(it.imageToViewportZoom(1.0), null, true);
            v.viewport.panTo(it.imageToViewportCoordinates(700, 600), true); }""")
        settle(page)
        assert page.evaluate("wsiView.viewer.world.getItemAt(0).viewportToImageZoom(wsiView.viewer.viewport.getZoom())") \
            == pytest.approx(1.0, rel=1e-3)
        assert any(k[0] == "img" and k[2] == top_level for k in state.cache._data), "no full-resolution tile was served"
        box = page.locator("#osd").bounding_box()
        shot = screen(page)
        for dx, dy in ((37, -23), (-300, 150), (260, 200)):  # chosen screen points, relative to the viewer's centre
            px, py = box["width"] / 2 + dx, box["height"] / 2 + dy
            page.mouse.move(box["x"] + px, box["y"] + py)
            page.wait_for_function("() => document.body.getAttribute('data-hover-tile') !== null")
            x, y = int(page.get_attribute("body", "data-hover-x")), int(page.get_attribute("body", "data-hover-y"))
            on_screen = decode_cell(shot[int(box["y"] + py), int(box["x"] + px)])
            assert on_screen == (x // CELL, y // CELL), (dx, dy, x, y)
            assert (x % CELL, y % CELL) == (0, 0)
            assert "tile #" in page.inner_text("#hover") and f"x {x}, y {y}" in page.inner_text("#hover")

        # scores at full opacity: the colour on screen is the colour map's colour of the tile's score
        page.evaluate("() => { const s = document.getElementById('opacity'); s.value = '1'; "
                      "s.dispatchEvent(new Event('input')); }")
        page.wait_for_timeout(200)
        settle(page)
        shot = screen(page)
        lut = colour_table("coolwarm")
        lay = info["layer"]
        seen = []
        for dx, dy in ((-300, 150), (37, -23), (260, 200)):
            px, py = int(box["x"] + box["width"] / 2 + dx), int(box["y"] + box["height"] / 2 + dy)
            i = page.evaluate(f"wsiView.tileAtScreen({px - box['x']}, {py - box['y']})")
            s = float(tile_scores(np.array([[lay["x"][i], lay["y"][i]]]))[0])
            t = (s - lay["vmin"]) / (lay["vmax"] - lay["vmin"])
            expected = lut[int(round(t * 255))].astype(int)
            assert np.abs(shot[py, px] - expected).max() <= 3, (i, s, shot[py, px], expected)
            seen.append((s, tuple(shot[py, px])))
        assert len({c for _, c in seen}) == 3 and seen[0][0] < seen[1][0] < seen[2][0]
        assert seen[2][1][0] > seen[0][1][0] and seen[2][1][2] < seen[0][1][2]  # higher score: redder, less blue

        # the top-tile list jumps to the highest-scoring tile
        page.evaluate("() => { const s = document.getElementById('opacity'); s.value = '0.5'; "
                      "s.dispatchEvent(new Event('input')); }")
        page.click("#toplist li >> nth=0")
        settle(page)
        first = int(page.get_attribute("#toplist li >> nth=0", "data-tile"))
        assert lay["score"][first] == max(lay["score"])
        cx, cy = page.evaluate("(() => { const it = wsiView.viewer.world.getItemAt(0); "
                               "const p = it.viewportToImageCoordinates(wsiView.viewer.viewport.getCenter(true)); "
                               "return [p.x, p.y]; })()")
        assert lay["x"][first] <= cx <= lay["x"][first] + CELL and lay["y"][first] <= cy <= lay["y"][first] + CELL
        save_doc_shot(page, "viewer_tile.png")

        page.goto(f"{url}/slide/broken")
        assert "Cannot open slide broken" in page.inner_text("h1") and "broken.tiff" in page.inner_text("#error")
        assert not errors, errors
        page.close()


def row_order(page) -> list[str]:
    return page.eval_on_selector_all("#slides tbody tr", "rows => rows.map(r => r.getAttribute('data-slide'))")


def test_cohort_page_in_chromium(browser, viewer_job):
    index = viewer_job / "heatmaps" / RUN / "index.html"
    page = browser.new_page(viewport={"width": 1300, "height": 900}, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.resolve().as_uri())  # from disk: no server
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#roc polyline").count() == 1 and page.inner_text("#auc-value").startswith("0.")
    assert not page.locator("a.viewer-link").first.is_visible()  # no viewer behind a file:// page
    page.click("th[data-col='probability']")  # ascending, empty cells last
    assert row_order(page) == ["s4", "s3", "s2", "s1", "s5"]
    page.click("th[data-col='probability']")
    assert row_order(page) == ["s1", "s2", "s3", "s4", "s5"] and page.get_attribute("body", "data-sorted") == "probability-desc"
    page.click("th[data-col='error']")
    page.click("th[data-col='error']")  # descending: misclassified first
    assert row_order(page)[:2] in (["s2", "s3"], ["s3", "s2"])
    page.click("th[data-col='label']")
    assert [page.get_attribute(f"#slides tbody tr >> nth={i}", "data-slide") for i in range(2)] in (["s2", "s4"], ["s4", "s2"])
    save_doc_shot(page, "cohort_page.png")
    page.check("#only-errors")
    assert page.get_attribute("body", "data-shown") == "2"
    assert sorted(page.eval_on_selector_all("#slides tbody tr", "rs => rs.filter(r => r.offsetParent !== null)"
                                            ".map(r => r.getAttribute('data-slide'))")) == ["s2", "s3"]
    page.uncheck("#only-errors")
    assert page.get_attribute("body", "data-shown") == "5"

    with serve_in_thread(create_app(viewer_job)) as url:  # served by the viewer: rows link to it
        page.goto(f"{url}/heatmaps/{RUN}/index.html")
        page.wait_for_selector("body[data-ready='1']")
        link = page.locator("tr[data-slide='s1'] a.viewer-link")
        assert link.is_visible()
        link.click()
        page.wait_for_selector("body[data-ready='1']", timeout=60000)
        assert page.url.startswith(f"{url}/slide/s1?run={RUN}")
    assert not errors, errors
    page.close()
