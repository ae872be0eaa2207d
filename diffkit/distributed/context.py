"""Which process of a ``torchrun`` job this is, and the process group that joins them.

diffkit has no launcher of its own: ``torchrun --nproc_per_node=N -m diffkit train ...`` starts N
copies of the command and tells each who it is through environment variables:

    RANK, WORLD_SIZE         this process's index and the number of processes (all machines)
    LOCAL_RANK               its index on this machine (→ its GPU, cuda:LOCAL_RANK)
    MASTER_ADDR, MASTER_PORT where rank 0 listens for the rendezvous
    TORCHELASTIC_RESTART_COUNT  how many times torchrun has restarted the job (--max-restarts)

:func:`init_distributed` reads them, picks the backend (NCCL with CUDA, gloo on the CPU), pins
the GPU and joins the process group; without them it returns a single-process context and
everything else runs unchanged.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping

import attrs
import torch
import torch.distributed as dist

from diffkit.errors import ConfigError, DiffkitError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("nccl", "gloo")


class DistributedError(DiffkitError, RuntimeError):
    """The distributed environment is incomplete or the process group could not be joined."""


@attrs.frozen(kw_only=True)
class DistributedContext:
    """This process's place in a (possibly one-process) job.

    ``device`` is where this rank computes: ``cuda:LOCAL_RANK`` with CUDA, else the CPU.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    """``"nccl"`` or ``"gloo"`` when a process group was joined; None for a single process."""
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"), converter=torch.device)
    restart_count: int = 0
    """``TORCHELASTIC_RESTART_COUNT``: 0 on the first attempt, k after k restarts."""

    @property
    def is_distributed(self) -> bool:
        """More than one process (a process group is joined)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, pictures and checkpoint metadata."""
        return self.rank == 0

    def describe(self) -> str:
        if not self.is_distributed:
            return f"1 process on {self.device}"
        return f"rank {self.rank} of {self.world_size} ({self.backend}, {self.device})"


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the torchrun variables are set (WORLD_SIZE and RANK at least)."""
    environ = os.environ if environ is None else environ
    return "WORLD_SIZE" in environ and "RANK" in environ


def _read_int(environ: Mapping[str, str], name: str, minimum: int) -> int:
    text = environ.get(name)
    if text is None:
        raise DistributedError(
            f"the distributed environment is incomplete: {name} is not set (torchrun sets "
            f"{', '.join(TORCHRUN_VARIABLES)}); start the job with "
            "`torchrun --nproc_per_node=N -m diffkit train ...`"
        )
    try:
        value = int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not an integer (torchrun sets it to one)") from None
    if value < minimum:
        raise DistributedError(f"{name}={value} is out of range (it must be ≥ {minimum})")
    return value


def context_from_environment(
    environ: Mapping[str, str] | None = None, *, device: torch.device | str | None = None
) -> DistributedContext:
    """The :class:`DistributedContext` the environment describes, without joining any group.

    ``device``: force the compute device (default: ``cuda:LOCAL_RANK`` when CUDA is available).
    """
    environ = os.environ if environ is None else environ
    restarts = int(environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if not launched_by_torchrun(environ):
        chosen = torch.device(device) if device is not None else _default_device(0)
        return DistributedContext(device=chosen, restart_count=restarts)
    world_size = _read_int(environ, "WORLD_SIZE", 1)
    rank = _read_int(environ, "RANK", 0)
    local_rank = _read_int(environ, "LOCAL_RANK", 0) if "LOCAL_RANK" in environ else rank
    if rank >= world_size:
        raise DistributedError(f"RANK={rank} must be smaller than WORLD_SIZE={world_size}")
    chosen = torch.device(device) if device is not None else _default_device(local_rank)
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK={local_rank} asks for {chosen} but this machine has {torch.cuda.device_count()} GPU(s); "
            "use --nproc_per_node ≤ the number of GPUs"
        )
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    return DistributedContext(
        rank=rank, local_rank=local_rank, world_size=world_size, backend=backend, device=chosen,
        restart_count=restarts,
    )


def _default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_distributed(
    *, device: torch.device | str | None = None, timeout_s: float = 1800.0
) -> DistributedContext:
    """Join the job's process group (when started by torchrun) and return this rank's context.

    With ``WORLD_SIZE=1`` (or no torchrun variables) no group is joined. Joining twice is
    harmless. A failed rendezvous raises :class:`DistributedError` naming the variables.
    ``timeout_s`` bounds every collective, e.g. the other ranks waiting while rank 0 writes
    the final sample grids and pipeline.
    """
    context = context_from_environment(device=device)
    if context.world_size == 1 or dist.is_initialized():
        return context
    if context.device.type == "cuda":
        torch.cuda.set_device(context.device)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedError(
            f"cannot join the process group: {', '.join(missing)} not set. torchrun sets "
            f"{', '.join(TORCHRUN_VARIABLES)}; start with `torchrun --nproc_per_node=N -m diffkit ...`"
        )
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        dist.init_process_group(
            backend=context.backend,
            store=job_store(context, timeout),
            rank=context.rank,
            world_size=context.world_size,
            timeout=timeout,
            device_id=context.device if context.device.type == "cuda" else None,
        )
    except Exception as exc:  # NCCL/gloo raise RuntimeError, DistStoreError, ValueError, …
        seen = ", ".join(f"{name}={os.environ.get(name, '<unset>')}" for name in TORCHRUN_VARIABLES)
        raise DistributedError(
            f"could not join the {context.backend} process group as rank {context.rank} of "
            f"{context.world_size} ({type(exc).__name__}: {exc}). The torchrun variables are {seen}; "
            "check that every rank can reach MASTER_ADDR:MASTER_PORT and that all ranks were started"
        ) from exc
    return context


def job_store(
    context: DistributedContext, timeout: datetime.timedelta, environ: Mapping[str, str] | None = None
) -> dist.Store:
    """The key-value store the ranks meet in, with keys private to this attempt of the job.

    torchrun keeps one store (at MASTER_ADDR:MASTER_PORT, hosted by its agent) for the whole
    job, across ``--max-restarts`` restarts. Joining with torch's default ``env://`` reads the
    addresses the ranks publish from it, so after a restart a fast rank can read the address
    a dead rank of the previous attempt left there and fail with "Connection refused" (seen
    in CI). Prefixing every key with the attempt number makes each attempt start clean.
    """
    environ = os.environ if environ is None else environ
    # torchrun's agent hosts the store; other launchers expect rank 0 to host it
    agent_hosts_it = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), context.world_size,
        is_master=not agent_hosts_it and context.rank == 0, timeout=timeout, multi_tenant=not agent_hosts_it,
    )
    return dist.PrefixStore(f"diffkit/attempt-{context.restart_count}/", store)


def shutdown_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_divisible(batch_size: int, world_size: int) -> int:
    """Examples per rank of a micro-batch of ``batch_size`` split over ``world_size`` ranks."""
    if batch_size % world_size:
        below = batch_size - batch_size % world_size
        options = f"{below} or {below + world_size}" if below else str(world_size)
        raise ConfigError(
            f"train.batch_size={batch_size} (the global micro-batch) does not split evenly over "
            f"{world_size} processes; use a multiple of {world_size} (e.g. {options}) or a different "
            "--nproc_per_node"
        )
    return batch_size // world_size
