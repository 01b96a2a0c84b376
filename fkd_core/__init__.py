"""Shared PyTorch training core for facial keypoint detection. Never imports ray or optuna."""
