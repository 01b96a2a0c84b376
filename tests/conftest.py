"""Fixtures shared by several test modules."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for the module's tests (no dashboard, no usage stats)."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
