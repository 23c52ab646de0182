"""Cohorts from several simulated sites (``wsi-mil synth --sites N``): colours differ by site, the same seed
gives the same bytes, prevalence per site, what labels.csv / cohort.json / the ground truth record, and
one-line errors for bad options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from wsi_mil.cli import main
from wsi_mil.errors import ConfigError
from wsi_mil.synth import (
    load_ground_truth,
    load_lesion_mask,
    load_tissue_mask,
    make_cohort,
    make_slide,
    read_cohort_manifest,
)
from wsi_mil.synth.cohort import site_labels
from wsi_mil.synth.render import SlideRenderer, SlideSpec
from wsi_mil.synth.site import SiteEffect, SiteRenderer

SIZE = (768, 768)


def _rows(cohort: Path) -> list[dict[str, str]]:
    with open(cohort / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _level0(path: Path) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))


def _mean_od(rgb: np.ndarray, tissue: np.ndarray, ds: int) -> np.ndarray:
    """(3,) mean optical density per channel over the tissue pixels (``tissue`` at downsample ``ds``)."""
    od = -np.log((rgb[ds // 2::ds, ds // 2::ds].astype(np.float64) + 1.0) / 256.0)
    return od[tissue].mean(axis=0)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sites_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 slides of 768 px from 3 sites (2 each) with strong stain shift; prevalence 0, 0.5, 1."""
    return make_cohort(tmp_path_factory.mktemp("sites") / "cohort", 6, size=SIZE, lesion_fraction=(0.04, 0.06),
                       seed=3, sites=3, site_prevalence=(0.0, 0.5, 1.0), stain_shift=2.0)


def test_the_same_tissue_differs_in_colour_by_site(tmp_path: Path) -> None:
    """One slide seed scanned at each of 3 sites: mean OD per channel moves with the site's stain amounts;
    stain shift 0 leaves the pixels exactly as without sites."""
    plain = make_slide(tmp_path / "plain.tiff", *SIZE, seed=11, positive=False)
    base = _level0(tmp_path / "plain.tiff")
    means = []
    for site in SiteEffect.draw_all(0, 3, 2.0, 85):
        truth = make_slide(tmp_path / f"{site.name}.tiff", *SIZE, seed=11, positive=False, site=site,
                           jpeg_quality=site.jpeg_quality)
        assert np.array_equal(truth.tissue_mask, plain.tissue_mask)  # the same tissue, only scanned elsewhere
        means.append(_mean_od(_level0(tmp_path / f"{site.name}.tiff"), truth.tissue_mask, 4))
    for a in range(3):
        for b in range(a + 1, 3):
            assert np.abs(means[a] - means[b]).max() > 0.08, (a, b, means)
    order = np.argsort([s.amounts[0] + s.amounts[1] for s in SiteEffect.draw_all(0, 3, 2.0, 85)])
    green = [m[1] for m in means]  # eosin and haematoxylin both absorb green most
    assert list(np.argsort(green)) == list(order)
    for site in SiteEffect.draw_all(0, 3, 0.0, 85):
        make_slide(tmp_path / "same.tiff", *SIZE, seed=11, positive=False, site=site)
        assert np.array_equal(_level0(tmp_path / "same.tiff"), base)


def test_cohort_sites_differ_more_than_slides_within_a_site(sites_cohort: Path) -> None:
    rows = _rows(sites_cohort)
    od = {}
    for r in rows:
        tissue, ds = load_tissue_mask(sites_cohort, r["slide_id"])
        od[r["slide_id"]] = _mean_od(_level0(sites_cohort / f"{r['slide_id']}.tiff"), tissue, int(ds)).sum()
    by_site: dict[str, list[float]] = {}
    for r in rows:
        by_site.setdefault(r["site"], []).append(float(od[r["slide_id"]]))
    site_means = np.array([np.mean(v) for v in by_site.values()])
    within = np.mean([np.var(v) for v in by_site.values()])
    assert site_means.var() > 3 * within, (by_site, within)


def test_labels_manifest_and_ground_truth_record_sites(sites_cohort: Path) -> None:
    rows = _rows(sites_cohort)
    assert (sites_cohort / "labels.csv").read_text().splitlines()[0] == "slide_id,label,case_id,site"
    assert [r["site"] for r in rows] == ["site_0", "site_1", "site_2"] * 2  # cases dealt in turn
    per_site = {s: sorted(int(r["label"]) for r in rows if r["site"] == s) for s in ("site_0", "site_1", "site_2")}
    assert per_site == {"site_0": [0, 0], "site_1": [0, 1], "site_2": [1, 1]}
    manifest = read_cohort_manifest(sites_cohort)
    assert manifest["params"]["sites"] == 3 and manifest["params"]["site_prevalence"] == [0.0, 0.5, 1.0]
    assert manifest["params"]["stain_shift"] == 2.0
    assert [s["site"] for s in manifest["sites"]] == ["site_0", "site_1", "site_2"]
    assert [(s["n_slides"], s["n_positive"]) for s in manifest["sites"]] == [(2, 0), (2, 1), (2, 2)]
    effects = SiteEffect.draw_all(3, 3, 2.0, 85)
    for doc, site in zip(manifest["sites"], effects):
        assert doc["stain_amounts"]["hematoxylin"] == pytest.approx(site.amounts[0], abs=1e-6)
        assert len(doc["stain_vectors_od"]["hematoxylin"]) == 3
        assert {"scanner_gamma_rgb", "scanner_gain_rgb", "blur_sigma_um", "jpeg_quality"} <= set(doc)
    for entry, r in zip(manifest["slides"], rows):
        assert entry["site"] == r["site"]
        meta = load_ground_truth(sites_cohort, r["slide_id"])
        k = int(r["site"].split("_")[1])
        assert meta["params"]["site"] == r["site"]
        site_doc = {key: v for key, v in manifest["sites"][k].items() if key not in ("n_slides", "n_positive")}
        assert meta["params"]["site_effect"] == site_doc
        assert meta["params"]["jpeg_quality"] == effects[k].jpeg_quality
        assert len(meta["params"]["slide_stain"]["stain_vectors_od"]) == 3
        assert entry["slide_stain"] == meta["params"]["slide_stain"]
        mask, _ = load_lesion_mask(sites_cohort, r["slide_id"])
        assert mask.any() == (r["label"] == "1")  # lesions drawn as on any cohort


def test_same_seed_same_bytes_and_resume(sites_cohort: Path, tmp_path: Path) -> None:
    again = make_cohort(tmp_path / "again", 6, size=SIZE, lesion_fraction=(0.04, 0.06), seed=3, sites=3,
                        site_prevalence=(0.0, 0.5, 1.0), stain_shift=2.0)
    files = sorted(p.relative_to(sites_cohort) for p in sites_cohort.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (sites_cohort / rel).read_bytes() == (again / rel).read_bytes(), rel
    stamps = {p: p.stat().st_mtime_ns for p in again.glob("*.tiff")}
    make_cohort(again, 6, size=SIZE, lesion_fraction=(0.04, 0.06), seed=3, sites=3,
                site_prevalence=(0.0, 0.5, 1.0), stain_shift=2.0)
    assert {p: p.stat().st_mtime_ns for p in again.glob("*.tiff")} == stamps  # complete slides are kept
    make_cohort(again, 6, size=SIZE, lesion_fraction=(0.04, 0.06), seed=3, sites=3,
                site_prevalence=(0.0, 0.5, 1.0), stain_shift=1.0)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in again.glob("*.tiff"))  # other sites: made again
    assert json.loads((again / "cohort.json").read_text())["params"]["stain_shift"] == 1.0


def test_sites_differ_between_seeds_and_with_the_shift() -> None:
    a, b = SiteEffect.draw_all(0, 3, 1.0, 85), SiteEffect.draw_all(1, 3, 1.0, 85)
    assert not np.allclose([s.amounts for s in a], [s.amounts for s in b])
    strong = SiteEffect.draw_all(0, 3, 2.0, 85)
    spread = lambda sites: np.ptp([np.log(s.amounts[0]) for s in sites])  # noqa: E731
    assert spread(strong) == pytest.approx(2 * spread(a), rel=1e-6)
    for s in strong:
        assert np.allclose(np.linalg.norm(s.stains, axis=1), 1.0) and (s.stains >= 0).all()
        assert 30 <= s.jpeg_quality <= 100 and s.blur_um >= 0


def test_site_labels_prevalence() -> None:
    sites = np.arange(300) % 3
    labels = site_labels(sites, (0.1, 0.5, 0.9), seed=4)
    assert [int(labels[sites == k].sum()) for k in range(3)] == [10, 50, 90]
    assert not np.array_equal(labels, site_labels(sites, (0.1, 0.5, 0.9), seed=5))


def test_blurred_tiles_are_seamless() -> None:
    """Tiles rendered one by one through a site (blur and all) match the same region rendered at once."""
    spec = SlideSpec.draw(1024, 1024, 0.5, 3, True, 0.05)
    site = max(SiteEffect.draw_all(0, 3, 2.0, 85), key=lambda s: s.blur_um)
    assert site.margin_px(0.5) >= 4
    render = SiteRenderer(SlideRenderer(spec), site, 0.5, 1024, 1024)
    whole = render(0, 0, 1024, 1024)
    assert whole is not None
    glass = np.array(site.colour(spec.stain.background), np.uint8)
    for y in range(0, 1024, 256):
        for x in range(0, 1024, 256):
            tile = render(x, y, 256, 256)
            tile = np.broadcast_to(glass, (256, 256, 3)) if tile is None else tile
            assert np.abs(tile.astype(int) - whole[y:y + 256, x:x + 256]).max() <= 1, (x, y)


def test_make_cohort_rejects_bad_site_options(tmp_path: Path) -> None:
    bad = [({"sites": 0}, "sites"), ({"sites": 4}, "sites: 4 sites need at least 4 cases"),
           ({"sites": 2, "site_prevalence": (0.5,)}, "site_prevalence: need one positive share per site"),
           ({"sites": 2, "site_prevalence": (0.5, 1.2)}, "within 0-1"),
           ({"site_prevalence": (0.5,)}, "only with several sites"),
           ({"sites": 2, "stain_shift": -1.0}, "stain_shift"), ({"sites": 2, "stain_shift": float("nan")}, "stain_shift")]
    for kwargs, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            make_cohort(tmp_path / "c", 3, size=SIZE, **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.rglob("*.tiff"))


def test_cli_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    rc = main(["synth", "-o", str(out), "-n", "4", "--size", "768", "768", "--sites", "2",
               "--site-prevalence", "0", "1", "--stain-shift", "1.5", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "site_0: 2 slides (0 positive)" in text and "site_1: 2 slides (2 positive)" in text
    assert [(r["site"], r["label"]) for r in _rows(out)] == [("site_0", "0"), ("site_1", "1")] * 2
    assert read_cohort_manifest(out)["params"]["stain_shift"] == 1.5
    # comma-separated is the same cohort
    rc = main(["synth", "-o", str(out), "-n", "4", "--size", "768", "768", "--sites", "2",
               "--site-prevalence", "0,1", "--stain-shift", "1.5"])
    assert rc == 0 and "kept slide_003.tiff (complete)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "start"), [
    (["--sites", "3", "--site-prevalence", "0.5", "0.5"], "error: site_prevalence: need one positive share"),
    (["--sites", "2", "--site-prevalence", "0.5", "2"], "error: site_prevalence: every share must be within 0-1"),
    (["--sites", "2", "--site-prevalence", "0.5", "x"], "error: site_prevalence: 'x' is not a number"),
    (["--sites", "2", "--site-prevalence", "nan", "0.5"], "error: site_prevalence: every share"),
    (["--sites", "2", "--stain-shift", "-1"], "error: stain_shift"),
    (["--sites", "9"], "error: sites: 9 sites need at least 9 cases"),
    (["--site-prevalence", "0.5"], "error: site_prevalence: only with several sites"),
    (["--sites", "2", "0.5"], "error: unexpected argument(s) 0.5"),
])
def test_cli_rejects_bad_site_options(argv: list[str], start: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["synth", "-o", str(tmp_path / "c"), "-n", "3", "--size", "768", "768", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(start) and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.tiff"))


def test_cli_rejects_zero_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "-o", str(tmp_path / "c"), "-n", "3", "--sites", "0"]) == 2
    assert "--sites" in capsys.readouterr().err
