"""MIL on tile features: min-max layer, WELDON, CHOWDER, baselines; training, CV, model runs.

Public API: :func:`load_model_run` -> :class:`ModelRun` (``predict_bag``), :func:`create_head`,
:func:`list_heads`, :func:`train_stage`, :func:`predict_stage`.
"""

from wsi_mil.mil.modelrun import BagPrediction, ModelRun, load_model_run
from wsi_mil.mil.registry import create_head, list_heads

__all__ = ["BagPrediction", "ModelRun", "create_head", "list_heads", "load_model_run", "predict_stage", "train_stage"]


def __getattr__(name: str):  # lazy: keep `import wsi_mil.mil` light
    if name in ("train_stage", "predict_stage"):
        from wsi_mil.mil import stages

        return getattr(stages, name)
    raise AttributeError(name)
