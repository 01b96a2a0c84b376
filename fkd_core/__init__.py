"""Shared PyTorch training core for facial keypoint detection. Never imports ray or optuna.

The Python API (README "Python API"):

    >>> from fkd_core import TrialConfig, train, predict
    >>> rows = []
    >>> summary = train(TrialConfig(max_epochs=2, synth_n=200), report=rows.append)
    >>> from fkd_core.predict import load_model
    >>> pred = predict(load_model("runs/x/best.pt"), images)     # uint8 [N, 1, S, S] -> [N, K, 2] px

``train`` and ``predict`` are the modules fkd_core.train and fkd_core.predict, made callable
(fkd_core.api): ``from package import submodule`` imports them on demand, so importing the
package alone (or fkd_core.config) does not import torch.
"""
from fkd_core.config import TrialConfig

__all__ = ["TrialConfig", "train", "predict"]
