"""The model registry raises its own domain errors and the ops layer maps them to wire codes:
not configured / file missing / failed to load → NOT_LOADED; the model layer's input errors →
BAD_REQUEST; any other exception (a bug) is never BAD_REQUEST — it reaches the transport,
which answers INTERNAL."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from daemon.config import ModelSetConfig
from daemon.model_registry import (
    ModelError,
    ModelFileMissing,
    ModelLoadFailed,
    ModelNotConfigured,
    ModelRegistry,
)
from daemon.models.vae import VAEInputError
from daemon.ops import DaemonOps
from daemon.pools import PoolLimits, PoolSettings, WorkerPool
from daemon.prompt_cache import PromptCache
from daemon.tcp_service import Peer, TcpService
from daemon.wire.client import DaemonClient, DaemonError
from daemon.wire.protocol import ErrorCode, OpError

PEER = Peer("127.0.0.1:1", authenticated=True, client_name="test", shm=False)


class ScriptedVAE:
    """A VAE whose decode raises what the test asks for (or decodes to zeros)."""

    latent_channels = 4
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, failure: BaseException | None = None):
        self.failure = failure

    def decode(self, latent: torch.Tensor, *, tile: bool | None = None) -> torch.Tensor:
        if self.failure is not None:
            raise self.failure
        b, _, h, w = latent.shape
        return torch.zeros(b, 8 * h, 8 * w, 3)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "vae.safetensors"
    path.write_bytes(b"not used by the scripted loader")
    return path


def registry_for(sets: dict[str, ModelSetConfig], loader) -> ModelRegistry:
    return ModelRegistry(sets, device=torch.device("cpu"), precision="fp32", vae_loader=loader)


@pytest.fixture
async def make_ops():
    pools: list[WorkerPool] = []
    registries: list[ModelRegistry] = []

    async def build(registry: ModelRegistry) -> DaemonOps:
        made = []
        for name in ("vae", "clip"):
            pool = WorkerPool(
                PoolSettings(name=name, limits=PoolLimits(1, 1), dynamic=False),
                free_memory=lambda: 1 << 40,
                run_scaler=False,
            )
            await pool.start()
            made.append(pool)
        pools.extend(made)
        registries.append(registry)
        return DaemonOps(
            registry=registry,
            vae_pool=made[0],
            clip_pool=made[1],
            prompt_cache=PromptCache(),
            status=dict,
            request_shutdown=lambda reason: None,
            shutdown_token=None,
        )

    yield build
    for pool in pools:
        await pool.close()
    for registry in registries:
        await registry.aclose()


def latent() -> np.ndarray:
    return np.zeros((1, 4, 2, 2), np.float32)


async def test_registry_errors_are_domain_errors_naming_the_set(weights, tmp_path):
    sets = {
        "default": ModelSetConfig("default", vae=weights),
        "textonly": ModelSetConfig("textonly", clip_l=weights),
        "gone": ModelSetConfig("gone", vae=tmp_path / "missing.safetensors"),
    }
    registry = registry_for(sets, lambda path, **_: ScriptedVAE())
    try:
        with pytest.raises(ModelNotConfigured, match="'pony' is not configured") as caught:
            await registry.vae("pony")
        assert caught.value.set_name == "pony"
        with pytest.raises(ModelNotConfigured, match="no VAE configured"):
            await registry.vae("textonly")
        with pytest.raises(ModelFileMissing, match="missing.safetensors"):
            await registry.vae("gone")
        assert isinstance(await registry.vae("default"), ScriptedVAE)
    finally:
        await registry.aclose()


@pytest.mark.expect_log_warnings  # the registry logs the failed load as an error
async def test_a_failed_load_is_remembered_and_raised_as_model_load_failed(weights):
    calls = []

    def loader(path, **_):
        calls.append(path)
        raise OSError("truncated file")

    registry = registry_for({"default": ModelSetConfig("default", vae=weights)}, loader)
    try:
        for _ in range(2):
            with pytest.raises(ModelLoadFailed, match="truncated file"):
                await registry.vae("default")
        assert len(calls) == 1  # no reload storm
        assert await registry.load_all() == ["model set 'default': vae failed to load: truncated file"]
    finally:
        await registry.aclose()
    assert issubclass(ModelLoadFailed, ModelError) and not issubclass(ModelError, OpError)


@pytest.mark.parametrize("model", ["pony", "gone"])
async def test_ops_answer_registry_errors_as_not_loaded(make_ops, weights, tmp_path, model):
    sets = {
        "default": ModelSetConfig("default", vae=weights),
        "gone": ModelSetConfig("gone", vae=tmp_path / "missing.safetensors"),
    }
    ops = await make_ops(registry_for(sets, lambda path, **_: ScriptedVAE()))
    with pytest.raises(OpError) as caught:
        await ops.handle("vae_decode", {"model": model}, [latent()], PEER)
    assert caught.value.code is ErrorCode.NOT_LOADED and repr(model) in caught.value.message


async def test_ops_answer_the_model_layers_input_errors_as_bad_request(make_ops, weights):
    vae = ScriptedVAE(VAEInputError("latent of shape (1, 4, 2, 2) is too small"))
    ops = await make_ops(
        registry_for({"default": ModelSetConfig("default", vae=weights)}, lambda p, **_: vae)
    )
    with pytest.raises(OpError) as caught:
        await ops.handle("vae_decode", {}, [latent()], PEER)
    assert caught.value.code is ErrorCode.BAD_REQUEST and "too small" in caught.value.message


async def test_a_value_error_from_a_bug_is_not_a_bad_request(make_ops, weights):
    vae = ScriptedVAE(ValueError("operands could not be broadcast together"))
    ops = await make_ops(
        registry_for({"default": ModelSetConfig("default", vae=weights)}, lambda p, **_: vae)
    )
    with pytest.raises(ValueError, match="broadcast") as caught:
        await ops.handle("vae_decode", {}, [latent()], PEER)
    assert not isinstance(caught.value, OpError)  # left to the transport: INTERNAL


@pytest.mark.expect_log_warnings  # the transport logs the bug with its traceback
async def test_a_bug_in_a_model_reaches_the_client_as_internal(make_ops, weights):
    vae = ScriptedVAE(ValueError("operands could not be broadcast together"))
    ops = await make_ops(
        registry_for({"default": ModelSetConfig("default", vae=weights)}, lambda p, **_: vae)
    )
    service = TcpService(ops, host="127.0.0.1", port=0)
    await service.start()
    try:

        def call() -> DaemonError:
            with DaemonClient(*service.address, shared_memory=False) as client:
                with pytest.raises(DaemonError) as caught:
                    client.vae_decode(latent())
                return caught.value

        error = await asyncio.to_thread(call)
    finally:
        await service.close()
    assert error.code is ErrorCode.INTERNAL and "broadcast" in error.message
