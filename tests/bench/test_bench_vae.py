"""VAE benchmark: our decoder vs diffusers' AutoencoderKL on the same full-size random weights.

Run: ``.venv/bin/python -m pytest tests/bench/test_bench_vae.py -m bench -s``
Prints, side by side in one run, the CPU latency of one 512×512 decode (latent 64×64, batch 1,
after a small warm-up decode) for ours and diffusers' with the ratio ours/theirs, and the
peak working memory of that decode (RSS above the level right before the call, sampled every
2 ms) plus the weights' footprint, in fp32 and bf16. Each measurement runs in a fresh
subprocess so peaks and allocator caches do not mix. Latency does not depend on weight
values, so random weights are fine.

bf16 is only timed where the CPU has native bf16 convolutions (AVX-512-BF16/AMX): elsewhere
torch's fallback is ~100× slower than fp32 (a single 512² decode would take hours) and
``load_vae`` runs such a VAE in fp32 anyway; the bench then reports the bf16 weight footprint.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.io import cpu_has_native
from daemon.models.vae import load_vae
from tests.helpers.tiny_models import FULL_VAE_CONFIG, build_diffusers_vae

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
LATENT = 64  # 512×512 pixels

_MEASURE = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil, torch
    impl, path, precision, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if impl == "ours":
        from daemon.models.vae import load_vae
        vae = load_vae(path, dtype=precision, strict_dtype=True)
        footprint = vae.footprint_bytes
        def decode(z):
            return vae.decode(z, tile=False)
    else:
        from diffusers import AutoencoderKL
        from safetensors.torch import load_file
        from tests.helpers.tiny_models import FULL_VAE_CONFIG
        model = AutoencoderKL(**FULL_VAE_CONFIG).eval()
        model.load_state_dict(load_file(path))
        model = model.to(dtype)
        footprint = sum(p.numel() * p.element_size() for p in model.parameters())
        def decode(z):
            with torch.inference_mode():
                image = model.decode(z.to(dtype)).sample
                return ((image.float() + 1) / 2).clamp(0, 1).movedim(1, -1).contiguous()
    generator = torch.Generator().manual_seed(0)
    decode(torch.randn(1, 4, 8, 8, generator=generator))  # warm-up
    latent = torch.randn(1, 4, size, size, generator=generator)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()
    def sample():
        while not done.wait(0.002):
            peak[0] = max(peak[0], process.memory_info().rss)
    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    decode(latent)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    print(json.dumps({"seconds": seconds, "peak_mib": (peak[0] - baseline) / 2**20,
                      "weights_mib": footprint / 2**20}))
    """
)


def _measure(impl: str, path: Path, precision: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, impl, str(path), precision, str(LATENT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def full_vae_file(tmp_path_factory):
    reference = build_diffusers_vae(FULL_VAE_CONFIG, seed=0, randomize=False)
    path = tmp_path_factory.mktemp("bench") / "vae_diffusers_layout.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return path


def test_bench_vae_decode_512_ours_vs_diffusers(full_vae_file):
    print(
        f"\nVAE decode {LATENT * 8}x{LATENT * 8} (latent {LATENT}x{LATENT}), batch 1, "
        f"CPU threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"{'precision':<10}{'ours s':>9}{'diffusers s':>13}{'ratio':>7}"
        f"{'ours peak MiB':>15}{'diffusers peak MiB':>20}{'weights MiB':>13}"
    )
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if not cpu_has_native(dtype):
            weights = load_vae(full_vae_file, dtype=precision, strict_dtype=True).footprint_bytes / 2**20
            print(
                f"{precision:<10}{'n/a: no native ' + precision + ' convolutions on this CPU':>55}"
                f"{weights:>20.0f}"
            )
            continue
        ours = _measure("ours", full_vae_file, precision)
        theirs = _measure("diffusers", full_vae_file, precision)
        ratio = ours["seconds"] / theirs["seconds"]
        print(
            f"{precision:<10}{ours['seconds']:>9.2f}{theirs['seconds']:>13.2f}{ratio:>7.2f}"
            f"{ours['peak_mib']:>15.0f}{theirs['peak_mib']:>20.0f}{ours['weights_mib']:>13.0f}"
        )
