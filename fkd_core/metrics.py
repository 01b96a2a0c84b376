"""Metric names shared by the trainer, the sweep (TuneConfig(metric=...)) and the Parquet schema."""
from __future__ import annotations

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_RMSE = "val_rmse_px"
VAL_NME = "val_nme"
VAL_SHAPE = "val_shape_err_px"
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_S = "images_per_s"
DIVERGED = "diverged"

# The metric the sweep optimises and ASHA / early stopping watch; lower is better.
OBJECTIVE = VAL_RMSE
VAL_METRICS = (VAL_RMSE, VAL_NME, VAL_SHAPE)
EPOCH_ROW_KEYS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_RMSE, VAL_NME, VAL_SHAPE, LR, EPOCH_SECONDS,
                  IMAGES_PER_S, DIVERGED)
