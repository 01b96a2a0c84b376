"""Metric names shared by the trainer, the sweep (TuneConfig(metric=...)) and the Parquet schema,
and the masked metric functions of DESIGN.md (pixels of the network input).

    >>> from fkd_core.metrics import rmse_px, nme
    >>> rmse_px(pred, target, mask), nme(pred, target, mask, KAGGLE15.norm_pair)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fkd_core.losses import cgd, cgd_faces, present_mask

EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
VAL_RMSE = "val_rmse_px"
VAL_NME = "val_nme"
VAL_SHAPE = "val_shape_err_px"
# Test-split metrics of the epoch's model, reported only when TrialConfig.score_test is set.
TEST_RMSE = "test_rmse_px"
TEST_NME = "test_nme"
TEST_SHAPE = "test_shape_err_px"
# The shape term's share of the training loss, alpha * shape / base, mean over the epoch's batches
# (0 without a shape term): a tiny share makes "equivalent" trivial (issue 19, item 7).
SHAPE_SHARE = "shape_share"
# Per test group (person), with score_test: group ids sorted, the sum of squared coordinate errors
# and the number of present coordinates; sqrt(sum(sse) / sum(count)) is the epoch's test RMSE.
TEST_GROUP_IDS = "test_group_ids"
TEST_GROUP_SSE = "test_group_sse"
TEST_GROUP_COUNT = "test_group_count"
LR = "lr"
EPOCH_SECONDS = "epoch_seconds"
IMAGES_PER_S = "images_per_s"
DIVERGED = "diverged"

# The metric the sweep optimises and ASHA / early stopping watch; lower is better.
OBJECTIVE = VAL_RMSE
VAL_METRICS = (VAL_RMSE, VAL_NME, VAL_SHAPE)
TEST_METRICS = (TEST_RMSE, TEST_NME, TEST_SHAPE)
TEST_GROUP_KEYS = (TEST_GROUP_IDS, TEST_GROUP_SSE, TEST_GROUP_COUNT)
EPOCH_ROW_KEYS = (EPOCH, TRAIN_LOSS, VAL_LOSS, VAL_RMSE, VAL_NME, VAL_SHAPE, LR, EPOCH_SECONDS,
                  IMAGES_PER_S, SHAPE_SHARE, DIVERGED)


# --- masked metric functions (DESIGN.md), in pixels ------------------------------------------


def _inputs(pred, target, mask) -> tuple[Tensor, Tensor, Tensor]:
    """Accept tensors or arrays; pred/target [N, K, 2] float, mask [N, K] bool."""
    pred = torch.as_tensor(pred, dtype=torch.float32)
    target = torch.as_tensor(target, dtype=torch.float32, device=pred.device)
    mask = present_mask(target, None if mask is None else torch.as_tensor(mask, device=pred.device))
    return pred, target, mask


def _squared_error(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """[N, K] squared distance ||p - g||^2 (x and y summed), 0 where missing."""
    err = torch.where(mask.unsqueeze(-1), pred - target.nan_to_num(), 0.0)
    return err.square().sum(dim=-1)


def rmse_px(pred, target, mask=None) -> Tensor:
    """sqrt(mean over present coordinates of (p - g)^2): the Kaggle metric. Scalar tensor."""
    pred, target, mask = _inputs(pred, target, mask)
    return (_squared_error(pred, target, mask).sum() / (2 * mask.sum()).clamp(min=1)).sqrt()


def per_keypoint_rmse_px(pred, target, mask=None) -> Tensor:
    """[K] RMSE over the x and y of each keypoint; NaN for a keypoint never present."""
    pred, target, mask = _inputs(pred, target, mask)
    count = 2 * mask.sum(dim=0)
    rmse = (_squared_error(pred, target, mask).sum(dim=0) / count.clamp(min=1)).sqrt()
    return torch.where(count > 0, rmse, math.nan)


def nme_faces(pred: Tensor, target: Tensor, mask: Tensor,
              norm_pair: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """Per-face NME.

    Returns:
        values: [N] mean over present keypoints of ||p_k - g_k||, divided by d_n = ||g_a - g_b||.
        valid: [N] bool, False where a normalising point is missing or the layout has no pair.
    """
    n = pred.shape[0]
    if norm_pair is None:
        return pred.new_zeros(n), torch.zeros(n, dtype=torch.bool, device=pred.device)
    a, b = norm_pair
    g = target.nan_to_num()
    d_n = (g[:, a] - g[:, b]).norm(dim=-1)
    valid = mask[:, a] & mask[:, b] & (d_n > 0) & (mask.sum(dim=1) > 0)
    dist = _squared_error(pred, target, mask).sqrt()                       # [N, K]
    per_face = dist.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return torch.where(valid, per_face / torch.where(valid, d_n, 1.0), 0.0), valid


def nme(pred, target, mask=None, norm_pair: tuple[int, int] | None = None) -> Tensor:
    """Mean over faces of the per-face NME (schema.norm_pair); NaN when no face has the pair."""
    pred, target, mask = _inputs(pred, target, mask)
    values, valid = nme_faces(pred, target, mask, norm_pair)
    return torch.where(valid.any(), values.sum() / valid.sum().clamp(min=1), math.nan)


def shape_err_px(pred, target, mask=None) -> Tensor:
    """CGD of the predictions as a metric (px): how well the face's geometry is kept."""
    pred, target, mask = _inputs(pred, target, mask)
    return cgd(pred, target, mask)


class MetricAccumulator:
    """Sums of an epoch's metrics kept on the device; ``compute()`` reads them back once.

    Calling ``.item()`` per batch would force a host-device sync per step; here each update only
    queues device ops, and the epoch pays one transfer.

        acc = MetricAccumulator(schema.norm_pair, device)
        for ...: acc.update(pred, target, mask, loss)
        row = acc.compute()    # {"loss", "rmse_px", "nme", "shape_err_px", "per_keypoint_rmse_px"}
    """

    # Slots of the running-sum vector.
    _LOSS, _FACES, _SQ, _COORDS, _NME, _NME_N, _SHAPE, _SHAPE_N = range(8)

    def __init__(self, norm_pair: tuple[int, int] | None, device: torch.device | str,
                 num_keypoints: int | None = None) -> None:
        self.norm_pair = norm_pair
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self._sums = torch.zeros(8, dtype=dtype, device=device)
        k = num_keypoints or 0
        self._kp_sq = torch.zeros(k, dtype=dtype, device=device)
        self._kp_n = torch.zeros(k, dtype=dtype, device=device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor, loss: Tensor | None = None) -> None:
        """pred, target: [N, K, 2] px; mask: [N, K]; loss: the batch's mean loss (scalar)."""
        pred = pred.float()
        sq = _squared_error(pred, target, mask)
        nme_values, nme_valid = nme_faces(pred, target, mask, self.norm_pair)
        shape_values, has_pairs = cgd_faces(pred, target, mask)
        n = pred.new_tensor(float(pred.shape[0]))
        batch = torch.stack([
            loss.detach().float() * n if loss is not None else n.new_zeros(()), n,
            sq.sum(), 2.0 * mask.sum(), nme_values.sum(), nme_valid.sum(),
            shape_values.sum(), has_pairs.sum(),
        ])
        self._sums += batch.to(self._sums.dtype)
        if self._kp_sq.numel():
            self._kp_sq += sq.sum(dim=0)
            self._kp_n += 2.0 * mask.sum(dim=0)

    def compute(self) -> dict[str, float | list[float]]:
        """Epoch values as Python floats (NaN where nothing was counted); one device read."""
        values = torch.cat([self._sums, self._kp_sq, self._kp_n]).tolist()
        s, k = values[:8], len(self._kp_sq)
        kp_sq, kp_n = values[8:8 + k], values[8 + k:]

        def ratio(num: float, den: float) -> float:
            return num / den if den > 0 else math.nan

        return {
            "loss": ratio(s[self._LOSS], s[self._FACES]),
            "rmse_px": math.sqrt(ratio(s[self._SQ], s[self._COORDS])) if s[self._COORDS] > 0 else math.nan,
            "nme": ratio(s[self._NME], s[self._NME_N]),
            "shape_err_px": ratio(s[self._SHAPE], s[self._SHAPE_N]),
            "per_keypoint_rmse_px": [math.sqrt(ratio(q, c)) if c > 0 else math.nan
                                     for q, c in zip(kp_sq, kp_n)],
        }
