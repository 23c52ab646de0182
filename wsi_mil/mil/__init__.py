"""MIL on tile features: min-max layer, WELDON, CHOWDER, baselines; training, CV, model runs.

Public API: :func:`load_model_run` -> :class:`ModelRun` (``predict_bag``), :func:`create_head`,
:func:`list_heads`, :func:`run_train`, :func:`run_predict`.
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "modelrun": ("BagPrediction", "ModelRun", "load_model_run"),
    "heads._registry": ("list_heads",),
    "registry": ("create_head",),
    "stage": ("run_predict", "run_train"),
})
