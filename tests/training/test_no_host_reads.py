"""No tensor is read back to Python inside a training step or a sampling step — checked on the CPU.

On a GPU every such read (``.item()``, ``float(t)``, ``bool(t)``, ``if t.any()``, ``nonzero``,
``torch.equal``) stalls the host until the device catches up. tests/gpu checks the real thing
with ``torch.cuda.set_sync_debug_mode``, but only where there is a GPU; this test intercepts the
same reads at the dispatcher (``TorchDispatchMode``) on the CPU, so CI guards the property too.

Two reads are legitimate and excluded: AdamW's step counter (a host tensor unless AdamW is fused,
as it is on CUDA) and the range check of class labels, which runs on the host copy of the labels
in a GPU run as well.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from diffkit.pipeline import Pipeline
from diffkit.training import InMemoryData, TrainConfig, Trainer

HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), float(), int(), bool()
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,  # data-dependent shapes: a sync on CUDA
    torch.ops.aten.masked_select.default,
    torch.ops.aten.equal.default,
}
# where a read touches host copies only, in a GPU run too ("file:function")
HOST_SIDE = ("class_label.py:labels_of", "data.py:batch")


class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to Python (and every ``Tensor.tolist``)."""

    def __init__(self, allowed: list[torch.Tensor], host_side: tuple[str, ...] = HOST_SIDE) -> None:
        super().__init__()
        self.allowed = allowed
        self.host_side = host_side
        self.seen: list[str] = []

    def _record(self, what: str) -> None:
        ours = [f for f in traceback.extract_stack() if "/diffkit/" in f.filename]  # outermost first
        if not any(f"{f.filename.rsplit('/', 1)[-1]}:{f.name}" in self.host_side for f in ours):
            where = " ← ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" for f in ours[::-1][:4])
            self.seen.append(f"{what}: {where}")

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        )
        if (func in HOST_READS or boolean_index) and not any(a is b for a in args for b in self.allowed):
            self._record(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        self._tolist = torch.Tensor.tolist
        mode = self

        def tolist(tensor: torch.Tensor) -> Any:  # reads the data directly, below the dispatcher
            mode._record("Tensor.tolist")
            return mode._tolist(tensor)

        torch.Tensor.tolist = tolist  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]
        return super().__exit__(*exc)


def _text_dit() -> tuple[Pipeline, InMemoryData]:
    pipeline = Pipeline(
        backbone=("dit", {"preset": "DiT-S/2", "input_size": 8, "in_channels": 4, "depth": 1, "num_classes": 0,
                          "vector_dim": 32, "hidden_size": 32, "num_heads": 2, "learn_sigma": True}),
        schedule="linear",
        conditioner=("text", {"width": 32, "context_dim": 32, "depth": 1, "heads": 2, "max_length": 12,
                              "drop_prob": 0.2}),
        parameterization="eps",  # learned σ: the hybrid loss with L_vlb
    )
    return pipeline, InMemoryData(torch.randn(32, 4, 8, 8), [f"shape {i % 3}" for i in range(32)])


def _class_unet() -> tuple[Pipeline, InMemoryData]:
    pipeline = Pipeline(
        backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
                           "layers_per_block": 1, "norm_groups": 8, "num_classes": 4}),
        schedule="cosine", conditioner=("class_label", {"num_classes": 4, "drop_prob": 0.2}),
        parameterization="v", objective={"weighting": "min_snr"},
    )
    return pipeline, InMemoryData(torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 4)


@pytest.mark.parametrize("build", [_text_dit, _class_unet])
def test_a_training_step_reads_nothing_back(build):
    torch.manual_seed(0)
    pipeline, data = build()
    config = TrainConfig(steps=10, batch_size=8, accumulation=2, warmup_steps=1, log_every=1000)
    trainer = Trainer(pipeline, data, config, progress=False, device="cpu")
    trainer.train_step()  # warm-up: optimizer state, cached tables
    step_counters = [state["step"] for state in trainer.optimizer.state.values()]
    with HostReads(step_counters) as reads:
        trainer.train_step()
        trainer.train_step()
    assert reads.seen == []


@pytest.mark.parametrize(
    "read",
    [
        lambda x: float(x.sum()),
        lambda x: bool((x > 0).any()),
        lambda x: x[x > 0.5],
        lambda x: (x > 0.5).tolist(),
        lambda x: torch.equal(x, x),
    ],
)
def test_the_interceptor_catches_each_kind_of_read(read):
    with HostReads([], host_side=()) as reads:
        read(torch.rand(4))
    assert len(reads.seen) == 1
    assert torch.Tensor.tolist(torch.ones(2)) == [1.0, 1.0]  # restored


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "unipc", "dpmpp_2m_sde"])
def test_sampling_reads_are_per_call_not_per_step(sampler):
    """Setting up a sampling run may read (the σ grid, once); the steps themselves must not."""
    torch.manual_seed(0)
    pipeline, _ = _class_unet()
    labels = torch.arange(4)

    def reads_for(steps: int) -> list[str]:
        # the σ grid is a float64 host table by design (docs/design.md, Numerics): its setup is exempt
        with HostReads([], host_side=(*HOST_SIDE, "draw.py:sigma_grid")) as reads:
            pipeline.sample(4, cond=labels, steps=steps, guidance=3.0, sampler=sampler, generator=0)
        return reads.seen

    few, many = reads_for(2), reads_for(6)
    assert len(many) == len(few), "\n".join(many)
