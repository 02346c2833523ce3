"""Device choice and memory figures on this (CPU-only or GPU) machine."""

from __future__ import annotations

import psutil
import pytest
import torch

from daemon.config import ConfigError
from daemon.devices import WorkerRunner, choose_device, memory_info


def test_cpu_is_reported_honestly_with_system_ram():
    choice = choose_device("cpu")
    assert choice.device == torch.device("cpu")
    assert choice.label == "cpu (system RAM reported as VRAM)"
    info = memory_info(choice.device)
    assert info.source == "system RAM (psutil)"
    assert info.total_bytes == psutil.virtual_memory().total
    assert 0 < info.free_bytes <= info.total_bytes and info.used_bytes >= 0


def test_auto_prefers_the_secondary_gpu_then_any_gpu_then_cpu():
    choice = choose_device("auto")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count >= 2:
        assert choice.device == torch.device("cuda", 1)
    elif count == 1:
        assert choice.device == torch.device("cuda", 0)
    else:
        assert choice.device.type in ("cpu", "mps") and "no CUDA" in choice.reason


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() > 7, reason="machine has a cuda:7"
)
def test_a_missing_cuda_device_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as err:
        choose_device("cuda:7")
    assert err.value.key == "daemon.device" and "cuda:7" in str(err.value)


def test_worker_runner_runs_the_job_on_cpu():
    assert WorkerRunner(torch.device("cpu")).run(lambda: 41 + 1) == 42
