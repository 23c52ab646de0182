"""Stage functions over a job folder: idempotent, resumable, one task per slide.

The tile stage lives here; the other stages live beside their code (``wsi_mil.extract``,
``wsi_mil.ssl``, ``wsi_mil.mil``, ``wsi_mil.heatmaps``) and follow the same pattern.
"""
