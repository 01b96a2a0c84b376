"""Ray Tune + Optuna sweeps over fkd_core.train: the only package that imports ray or optuna.

    >>> from sweep import read_frames
    >>> trials, epochs = read_frames("results/fkd-yt15")       # pandas, through sweep.store
"""
from sweep.frames import SweepFrames, read_frames

__all__ = ["SweepFrames", "read_frames"]
