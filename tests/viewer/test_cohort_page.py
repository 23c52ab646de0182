"""The cohort page's summary (out-of-fold AUC with CI, ROC, confusion matrix, class counts, sites) and
its table (error column, misclassified marks, viewer links), checked against scikit-learn."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve
from viewer_data import OOF, RUN, write_oof_run

from wsi_mil.heatmaps.report import ReportRow, render_report_html
from wsi_mil.heatmaps.summary import cohort_summary


@pytest.fixture()
def run_dir(tmp_path):
    return write_oof_run(tmp_path / "models" / "r")


def test_summary_matches_scikit_learn(run_dir):
    s = cohort_summary(run_dir, ["normal", "tumor"], 1)
    y = np.array([lab == "tumor" for _, lab, _, _ in OOF])
    p = np.array([q for _, _, q, _ in OOF])
    assert s.n_oof == 20  # the test-split row is left out
    assert s.auc == pytest.approx(roc_auc_score(y, p))
    assert s.auc_ci == [0.61, 0.97] and s.ci_level == 0.9  # as recorded by train
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(s.roc, np.stack([fpr, tpr], 1))
    np.testing.assert_array_equal(s.confusion, confusion_matrix(y, p > 0.5))  # argmax: a tie at 0.5 is class 0
    assert s.class_counts == {"normal": 10, "tumor": 10}
    assert s.site_column == "site" and [f.site for f in s.sites] == ["A", "B"]
    for f, m in zip(s.sites, (np.arange(20) < 10, np.arange(20) >= 10)):
        assert f.n == 10 and f.auc == pytest.approx(roc_auc_score(y[m], p[m]))
        assert f.accuracy == pytest.approx(((p[m] > 0.5) == y[m]).mean())


def test_summary_without_recorded_ci_or_sites(run_dir):
    (run_dir / "metrics.json").write_text(json.dumps({}))
    (run_dir / "config.json").write_text(json.dumps({}))
    s = cohort_summary(run_dir, ["normal", "tumor"], 1)
    lo, hi = s.auc_ci
    assert lo < s.auc < hi and s.ci_level == 0.95 and s.sites == [] and s.site_column is None
    assert cohort_summary(run_dir, ["normal", "tumor"], 0).auc == pytest.approx(s.auc)  # same AUC either way round
    (run_dir / "predictions.csv").write_text("slide_id,label\na,tumor\n")  # no probabilities: nothing to summarise
    assert cohort_summary(run_dir, ["normal", "tumor"], 1) is None


def test_page_shows_summary_first_then_the_table(viewer_job):
    html = (viewer_job / "heatmaps" / RUN / "index.html").read_text()
    assert html.index('id="summary"') < html.index('id="slides"')
    assert re.search(r'id="auc-value">0\.\d{3}<', html) and "90% CI 0.610–0.970" in html
    assert len(re.findall(r'<tr [^>]*data-error="1"', html)) == 2 and 'id="n-errors">2<' in html
    assert re.search(r'<polyline points="[^"]+"', html) and 'id="confusion"' in html and 'id="sites"' in html
    assert 'href="../../slide/s1?run=r1"' in html and "<script src" not in html and "https://" not in html
    # the table's rows: the error column says yes for the two misclassified slides only
    rows = dict(re.findall(r'data-slide="([^"]+)"[^>]*>.*?<td data-sort="(yes|no|)"', html))
    assert rows == {"s1": "no", "s2": "yes", "s3": "yes", "s4": "no", "s5": ""}


def test_page_without_summary_or_viewer(tmp_path):
    page = render_report_html(tmp_path, [ReportRow("a", "done", label="x", predicted="y")], "t")
    html = page.read_text()
    assert 'id="summary"' not in html and 'class="viewer-link"' not in html and '<tr class="done" data-slide="a" data-error="1">' in html
