"""SimCLR self-supervised pretraining of timm encoders on a job's own tiles (``wsi-mil pretrain``).

- ``config``: the ``pretrain`` config section (:class:`PretrainConfig`, :class:`AugmentConfig`);
- ``augment``: batched two-view augmentations on the training device;
- ``head``: projection MLP and backbone + head model;
- ``loss``: NT-Xent, with negatives gathered across DDP processes;
- ``optim``: AdamW / LARS, warm-up + cosine schedule;
- ``data``: deterministic, shardable chunk-aware tile order and threaded reading;
- ``checkpoint``: checkpoints for exact resume;
- ``train``: the loop (bf16 on CUDA, DDP under torchrun, progress);
- ``stage``: ``run_pretrain(job, out_dir, cfg)`` -> an encoder folder for ``extract --weights``.

Tile-level lesion probes of an encoder (does it see disease?) are in ``wsi_mil.evaluation.probe``.
"""
