"""Evaluation against ground truth: do tile scores and encoder features find the lesions?

- ``lesion``: THE rule that labels a tile lesion / normal / ambiguous from its lesion share;
- ``truth``: per-tile lesion share of a ``wsi_mil.synth`` cohort's tiles (:func:`synth_truth`);
- ``tiles``: tile AUC of scores against ground truth, within each slide and pooled
  (:func:`evaluate_tile_scores`, :func:`evaluate_tiles` for a model run over feature files);
- ``localisation``: the same figures read from ``predict``'s per-tile CSVs (``wsi-mil demo``);
- ``probe``: linear probe and cosine k-NN of an encoder's tile features against lesion labels.

AUC is :func:`wsi_mil.mil.metrics.roc_auc` everywhere. Importing this package loads nothing heavy.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "lesion": ("LESION_TILE_FRACTION", "label_tiles"),
    "localisation": ("Localisation", "evaluate_localisation"),
    "probe": ("encode_tiles", "labelled_tiles", "probe_auc"),
    "tiles": ("TileEvaluation", "evaluate_tile_scores", "evaluate_tiles"),
    "truth": ("TruthFn", "synth_truth", "tile_lesion_fraction"),
})
