"""Ray Tune + Optuna sweeps over fkd_core.train: the only package that imports ray or optuna."""
