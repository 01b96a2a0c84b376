"""Gradient-norm clipping (TrialConfig.grad_clip): one outlying batch moves the weights by at most
lr x the clip under plain SGD, and 0 leaves the step as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fkd_core.config import TrialConfig
from fkd_core.loop import Batches, StepSettings, train_one_epoch
from fkd_core.losses import Objective, mse


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 4, 2 * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).view(-1, 2, 2)


def _step(clip: float) -> float:
    """The norm of the weight change of one SGD step (lr 1) on a batch with targets far off."""
    torch.manual_seed(0)
    model = _Linear()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    images = torch.full((8, 1, 4, 4), 200, dtype=torch.uint8)
    data = Batches.of(images, torch.arange(8), torch.full((8, 2, 2), 500.0), torch.device("cpu"))
    steps = StepSettings(batch_size=8, amp_dtype=None, channels_last=False, augment=None,
                         flip_perm=[0, 1], grad_clip=clip)
    train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=1.0), Objective(mse, None, 0.0),
                    data, steps, torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((after - before).norm())


def test_a_clipped_step_moves_the_weights_by_at_most_the_clip():
    free = _step(0.0)
    assert free > 100.0                            # the outlying batch's raw gradient is huge
    assert _step(1.0) == pytest.approx(1.0, rel=1e-4)
    assert _step(1e9) == pytest.approx(free, rel=1e-6)   # a clip above the norm changes nothing


def test_grad_clip_is_checked():
    with pytest.raises(ValueError, match="grad_clip"):
        TrialConfig(grad_clip=-1.0)
    assert TrialConfig().grad_clip == 0.0
