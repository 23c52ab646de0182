"""MIL on tile features: min-max layer, WELDON, CHOWDER, baselines; training, CV, model runs.

Public API: :func:`load_model_run` -> :class:`ModelRun` (``predict_bag``), :func:`create_head`,
:func:`list_heads`, :func:`run_train`, :func:`run_predict`.
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "BagPrediction": "modelrun",
    "ModelRun": "modelrun",
    "create_head": "registry",
    "list_heads": "registry",
    "load_model_run": "modelrun",
    "run_predict": "stage",
    "run_train": "stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
