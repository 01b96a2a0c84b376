"""sweep.trainable outside a running sweep: resources Ray assigns, and the GPU-share memory cap."""
from __future__ import annotations

import pytest
import torch

from fkd_core.config import TrialConfig
from fkd_core.data import load_dataset
from sweep import trainable
from sweep.spaces import data_key


@pytest.fixture()
def packed(monkeypatch):
    """A trial that Ray placed on a quarter of a (pretend) GPU; records the caps it sets."""
    caps = []
    monkeypatch.setattr(trainable, "_assigned_resources", lambda: {"CPU": 2.0, "GPU": 0.25})
    monkeypatch.setattr(trainable, "device_of", lambda cfg: ("cuda:0", "Pretend H100"))
    monkeypatch.setattr("fkd_core.train.limit_gpu_memory",
                        lambda share, device: caps.append((share, str(device))) or 0.24)
    return caps


def _run(train_fn):
    cfg = TrialConfig(synth_n=20, batch_size=512)
    data = trainable.share(load_dataset("synthetic", synth_n=20, synth_seed=0))
    trainable.train_trial({"cfg": cfg.to_dict()}, datasets={data_key(cfg): data}, train_fn=train_fn)


@pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant")
def test_packed_trial_caps_memory_and_explains_running_out(packed):
    def oom(cfg, data, report, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError) as err:
        _run(oom)
    assert packed == [(0.25, "cuda:0")]
    assert str(err.value) == ("out of GPU memory within the trial's 0.25 GPU share (0.240 of Pretend "
                              "H100's memory, CUDA context excluded): use a larger --gpus-per-trial "
                              "or a smaller batch_size (was 512)")
    assert torch.get_num_threads() == 2


@pytest.mark.filterwarnings("ignore:`get_checkpoint` is meant")
def test_cpu_trial_sets_no_cap_and_passes_errors_through(monkeypatch):
    monkeypatch.setattr(trainable, "_assigned_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr("fkd_core.train.limit_gpu_memory", lambda *a: pytest.fail("capped a CPU trial"))
    threads = torch.get_num_threads()

    def boom(cfg, data, report, **kwargs):
        raise torch.cuda.OutOfMemoryError("host side")

    try:
        with pytest.raises(torch.cuda.OutOfMemoryError, match="host side"):
            _run(boom)
    finally:
        torch.set_num_threads(threads)
