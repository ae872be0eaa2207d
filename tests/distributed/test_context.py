"""The torchrun environment, batch splitting, per-rank seeds and fault injection (one process)."""

from __future__ import annotations

import pytest
import torch

from diffkit.distributed import DistributedError, check_divisible, context_from_environment
from diffkit.distributed.faults import FAULT_VARIABLE, fault_step
from diffkit.errors import ConfigError
from diffkit.training.data import batch_indices, rank_slice
from diffkit.training.rng import step_seed

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}


def test_without_torchrun_variables_a_single_process_context():
    context = context_from_environment({}, device="cpu")
    assert (context.rank, context.world_size, context.backend) == (0, 1, None)
    assert context.is_main and not context.is_distributed


def test_torchrun_variables_give_rank_world_size_and_gloo_on_the_cpu():
    context = context_from_environment({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2"}, device="cpu")
    assert (context.rank, context.local_rank, context.world_size) == (1, 1, 2)
    assert context.backend == "gloo" and not context.is_main and context.restart_count == 2
    assert "rank 1 of 2" in context.describe()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"RANK": "two"}, "RANK='two' is not an integer"),
        ({"RANK": "2"}, "RANK=2 must be smaller than WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is out of range"),
    ],
)
def test_broken_torchrun_variables_are_named(changes, message):
    with pytest.raises(DistributedError, match=message):
        context_from_environment({**TORCHRUN, **changes}, device="cpu")


def test_init_without_rendezvous_address_names_the_torchrun_variables(monkeypatch):
    from diffkit.distributed import init_distributed

    for name, value in TORCHRUN.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(DistributedError, match="MASTER_ADDR, MASTER_PORT not set.*torchrun sets RANK, WORLD_SIZE"):
        init_distributed(device="cpu")


def test_init_failure_is_reported_with_the_variables_torchrun_sets(monkeypatch):
    from diffkit.distributed import init_distributed

    # a port nobody listens on and rank 1: the rendezvous waits for rank 0, then times out
    for name, value in {**TORCHRUN, "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    expected = r"could not join the gloo process group as rank 1 of 2.*MASTER_PORT=1"
    with pytest.raises(DistributedError, match=expected):
        init_distributed(device="cpu", timeout_s=2)


def test_world_size_must_divide_the_global_batch():
    assert check_divisible(128, 4) == 32
    with pytest.raises(ConfigError, match=r"batch_size=100 .* over 3 processes; use a multiple of 3 \(e.g. 99 or 102\)"):
        check_divisible(100, 3)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_slices_are_disjoint_and_cover_every_example_once_per_epoch(world_size):
    size, batch, seed = 24, 8, 5
    seen = []
    for cursor in range(0, size, batch):  # one epoch
        global_batch = batch_indices(size, seed, cursor, batch)
        slices = [rank_slice(global_batch, rank, world_size) for rank in range(world_size)]
        assert torch.equal(torch.cat(slices), global_batch)  # the ranks together take the batch
        seen += [int(i) for part in slices for i in part]
    assert sorted(seen) == list(range(size))


def test_rank_slice_rejects_a_bad_rank_or_an_uneven_batch():
    with pytest.raises(ConfigError, match="rank must lie in"):
        rank_slice(torch.arange(4), 2, 2)
    with pytest.raises(ConfigError, match="does not split evenly"):
        rank_slice(torch.arange(5), 0, 2)


def test_step_seeds_differ_across_ranks_steps_and_runs_and_repeat_exactly():
    seeds = {(s, r, t): step_seed(s, r, t) for s in range(3) for r in range(4) for t in range(50)}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, rank, step) share a stream
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert step_seed(1, 2, 3) == step_seed(1, 2, 3)
    # the streams themselves are uncorrelated: noise of rank 0 and rank 1 at the same step
    a = torch.randn(20000, generator=torch.Generator().manual_seed(step_seed(0, 0, 7)))
    b = torch.randn(20000, generator=torch.Generator().manual_seed(step_seed(0, 1, 7)))
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.03


def test_fault_injection_targets_one_rank_on_the_first_attempt_only(monkeypatch):
    first = context_from_environment(TORCHRUN, device="cpu")
    restarted = context_from_environment({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "1"}, device="cpu")
    rank0 = context_from_environment({**TORCHRUN, "RANK": "0"}, device="cpu")
    monkeypatch.setenv(FAULT_VARIABLE, "1:7")
    assert fault_step(first) == 7
    assert fault_step(restarted) is None and fault_step(rank0) is None
    monkeypatch.setenv(FAULT_VARIABLE, "seven")
    with pytest.raises(ConfigError, match="RANK:STEP"):
        fault_step(first)
    monkeypatch.delenv(FAULT_VARIABLE)
    assert fault_step(first) is None


def test_each_attempt_of_a_job_meets_in_its_own_keys():
    """torchrun's store outlives a restart: attempt 1 must not read the addresses attempt 0 left."""
    import datetime

    import torch.distributed as dist

    from diffkit.distributed.context import job_store

    timeout = datetime.timedelta(seconds=10)
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timeout, wait_for_workers=False)
    environ = {**TORCHRUN, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port),
               "TORCHELASTIC_USE_AGENT_STORE": "True"}
    first = context_from_environment({**environ, "TORCHELASTIC_RESTART_COUNT": "0"}, device="cpu")
    again = context_from_environment({**environ, "TORCHELASTIC_RESTART_COUNT": "1"}, device="cpu")
    job_store(first, timeout, environ).set("rank0/address", "a dead process")
    assert job_store(first, timeout, environ).get("rank0/address") == b"a dead process"
    assert not job_store(again, timeout, environ).check(["rank0/address"])
