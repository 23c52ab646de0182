"""SimCLR self-supervised pretraining of timm encoders on a job's own tiles.

augment (batched views on the device), head (projection MLP), loss (NT-Xent, DDP-aware),
data (tile order and reading from patch stores), train (the loop, checkpoints, exact resume),
stage (``wsi-mil pretrain`` over a job folder), config (the ``pretrain`` section).
"""
