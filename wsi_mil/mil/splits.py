"""Cross-validation splits: stratified K-fold grouped by case (no case in two folds).

``assign_folds`` gives each training slide the fold in which it is held out; inside a training
fold, ``validation_split`` holds out a stratified, grouped validation part for early stopping.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from wsi_mil.errors import LabelsError


def check_fold_counts(targets: np.ndarray, groups: np.ndarray, class_names: list[str], k: int, source: str) -> None:
    """Refuse K folds when some class has fewer than K cases (each test fold needs one of each)."""
    cases: dict[int, set[str]] = defaultdict(set)
    slides: dict[int, int] = defaultdict(int)
    for t, g in zip(targets.tolist(), groups.tolist(), strict=True):
        cases[t].add(g)
        slides[t] += 1
    for ci, name in enumerate(class_names):
        n = len(cases[ci])
        if 0 < n < k:
            fix = (f"lower --folds to at most {n} or add slides" if n >= 2 else
                   f"add slides of class '{name}' (at least 2 cases), or remove its row(s) if it is a stray label value")
            raise LabelsError(
                f"{source}: class '{name}' has {slides[ci]} training slide(s) from {n} case(s), "
                f"fewer than the {k} folds asked for; {fix}"
            )


def assign_folds(targets: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n,) int fold index in [0, k) per slide, stratified by ``targets`` and grouped by ``groups``."""
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(len(targets), -1, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # class counts are checked by check_fold_counts
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(targets)), targets, groups)):
            folds[test] = f
    return folds


def validation_split(
    index: np.ndarray, targets: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split slide positions ``index`` into (train, validation) parts, grouped and stratified.

    The validation part is about ``fraction`` of the slides (one of ``round(1 / fraction)``
    grouped folds). When some class has fewer slides than that many folds (tiny cohorts), the
    split is grouped but not stratified. With fewer than two cases there is no validation part
    (an empty array): training then runs ``max_epochs``.
    """
    sub_groups = groups[index]
    n_groups = len(set(sub_groups.tolist()))
    if n_groups < 2:
        return index, index[:0]
    n_splits = min(max(2, int(round(1.0 / fraction))), n_groups)
    counts = np.bincount(targets[index])
    smallest = int(counts[counts > 0].min())
    if smallest >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, val = next(splitter.split(np.zeros(len(index)), targets[index], sub_groups))
    return index[train], index[val]
