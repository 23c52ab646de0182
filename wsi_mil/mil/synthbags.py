"""Synthetic feature bags with tile-level ground truth, for tests and benchmarks.

A slide is a bag of N tiles with D-dim features drawn from N(0, 1). Positive slides carry a
small share of lesion tiles (``lesion_fraction``, e.g. 1-5 %) whose features are shifted by
``shift`` in ``n_informative`` dimensions. Every slide also gets a slide-level offset
N(0, ``slide_noise``^2) on all dimensions (stain and scanner variation), which drowns the
diluted lesion signal in the bag mean but not the extreme tiles: the regime where min-max
pooling should beat mean pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SyntheticCohort:
    """Bags ``features[i]`` (N_i, D), slide labels (n,) int, tile labels ``lesion[i]`` (N_i,) bool."""

    slide_ids: list[str]
    labels: np.ndarray
    features: list[np.ndarray]
    lesion: list[np.ndarray]
    case_ids: list[str]


def make_synthetic_bags(
    n_slides: int = 60,
    tiles: tuple[int, int] = (100, 300),
    dim: int = 32,
    lesion_fraction: tuple[float, float] = (0.01, 0.05),
    shift: float = 3.0,
    n_informative: int = 4,
    slide_noise: float = 0.5,
    positive_fraction: float = 0.5,
    slides_per_case: int = 1,
    dtype: type = np.float32,
    seed: int = 0,
) -> SyntheticCohort:
    """Draw a cohort; at least one lesion tile per positive slide. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_slides * positive_fraction))
    labels = np.array([1] * n_pos + [0] * (n_slides - n_pos), dtype=np.int64)
    rng.shuffle(labels)
    direction = np.zeros(dim, dtype=np.float32)
    direction[:n_informative] = shift
    feats: list[np.ndarray] = []
    lesions: list[np.ndarray] = []
    ids: list[str] = []
    cases: list[str] = []
    for i in range(n_slides):
        n = int(rng.integers(tiles[0], tiles[1] + 1))
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x += rng.normal(0.0, slide_noise, size=dim).astype(np.float32)
        lesion = np.zeros(n, dtype=bool)
        if labels[i] == 1:
            k = max(1, int(round(n * rng.uniform(*lesion_fraction))))
            lesion[rng.choice(n, size=k, replace=False)] = True
            x[lesion] += direction
        feats.append(x.astype(dtype))
        lesions.append(lesion)
        ids.append(f"slide_{i:03d}")
        cases.append(f"case_{i // slides_per_case:03d}")
    return SyntheticCohort(ids, labels, feats, lesions, cases)


def write_synthetic_cohort(
    cohort: SyntheticCohort, folder: str | Path, encoder_id: str = "synthetic", labels_csv: str | Path | None = None
) -> tuple[Path, Path]:
    """Write the bags as feature files ``folder/{slide_id}.h5`` and a labels CSV; returns both paths."""
    from wsi_mil.atomic import write_text_atomic
    from wsi_mil.stores.features import write_feature_file

    folder = Path(folder)
    for sid, x in zip(cohort.slide_ids, cohort.features, strict=True):
        coords = np.stack([np.arange(len(x)) * 224, np.zeros(len(x))], axis=1).astype(np.int64)
        write_feature_file(folder / f"{sid}.h5", x, coords, {"encoder_id": encoder_id, "slide_id": sid})
    csv_path = Path(labels_csv) if labels_csv else folder.parent / "labels.csv"
    lines = ["slide_id,label,case_id"] + [f"{s},{y},{c}" for s, y, c in
                                          zip(cohort.slide_ids, cohort.labels, cohort.case_ids, strict=True)]
    write_text_atomic(csv_path, "\n".join(lines) + "\n")
    return folder, csv_path
