"""Training in several processes with DistributedDataParallel: the process group, which rank
does what, the sampler, seeds, the loss terms that must see the whole batch, and the local
launcher behind ``pathoseg train --nproc N``.

One process per device: gloo on CPU, nccl on CUDA (each rank its own GPU). A run is either
launched here (:func:`launch`, which sets the same environment torchrun sets) or by
``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT:
:func:`ranks_from_env`). ``TrainConfig.batch_size`` is the global batch: each rank takes
``batch_size / world_size`` crops a step, and DDP averages the ranks' gradients, so a step's
gradient is the gradient of the loss on the global batch (:class:`GlobalDiceLoss` for the
one term that is not a mean of per-pixel losses).

BatchNorm: SyncBatchNorm on CUDA, so the statistics of a step are those of the global batch
(as in one process) however few crops each GPU holds; per-rank BatchNorm on CPU, because
SyncBatchNorm has no CPU implementation in torch. There the running statistics are averaged
over the ranks at the end of every epoch (:func:`average_buffers`), so validation, the
checkpoint and every rank see the same model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from pathoseg.errors import PathosegError

# Environment variables torchrun sets for every process (and :func:`launch` sets the same).
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the training processes (the default: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # index among the processes on this machine: its GPU on CUDA
    local_world_size: int = 1
    distributed: bool = False  # launched by torchrun or --nproc (a world of 1 included)

    @property
    def is_main(self) -> bool:
        """Rank 0 validates, writes checkpoints and logs, and shows progress."""
        return self.rank == 0

    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size}"


SINGLE = Ranks()


@dataclass(frozen=True)
class DistConfig:
    """How the processes talk: how long a collective may wait before the run gives up."""

    timeout_minutes: float = 30.0  # validation on rank 0 runs while the others wait


def ranks_from_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The ranks torchrun (or :func:`launch`) put in the environment; :data:`SINGLE` without."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return SINGLE
    # Launchers that set only RANK and WORLD_SIZE: one process per machine's worth of them.
    defaults = {"LOCAL_RANK": env["RANK"], "LOCAL_WORLD_SIZE": env["WORLD_SIZE"]}
    values = {}
    for name in RANK_VARIABLES:
        text = env.get(name, defaults.get(name, ""))
        try:
            values[name] = int(text)
        except ValueError:
            raise PathosegError(f"{name}={text!r} in the environment is not a whole number") from None
    rank, world, local_rank, local_world = (values[n] for n in RANK_VARIABLES)
    if not (0 <= rank < world and 0 <= local_rank < local_world <= world):
        raise PathosegError(f"inconsistent process ranks in the environment: RANK={rank} WORLD_SIZE={world} "
                            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}")
    return Ranks(rank, world, local_rank, local_world, distributed=True)


def available_slots(device: torch.device) -> tuple[int, str]:
    """How many training processes this machine can give a device each: GPUs on CUDA, cores on CPU."""
    if device.type == "cuda":
        return torch.cuda.device_count(), "CUDA GPUs"
    if device.type == "cpu":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, "CPU cores"
    raise PathosegError(f"training in several processes needs cpu or cuda, not {device.type} (pass --device cpu)")


def check_local_processes(count: int, device: torch.device, flag: str = "--nproc") -> None:
    """A one-line error when ``count`` processes on this machine (asked for by ``flag``) would
    share a device."""
    if count < 1:
        raise PathosegError(f"{flag} must be 1 or more, not {count}")
    slots, what = available_slots(device)
    if count > slots:
        raise PathosegError(f"{flag} {count}: more processes than the {slots} {what} on this machine")


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The crops each rank takes per step; the batch size is the global batch."""
    if global_batch % world_size:
        raise PathosegError(f"--batch-size {global_batch} is the global batch and does not split evenly over "
                            f"{world_size} processes; use a multiple of {world_size}")
    return global_batch // world_size


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if ranks.distributed and device.type == "cuda":
        return torch.device("cuda", ranks.local_rank)
    return device


def rank_seed(seed: int, rank: int) -> int:
    """A seed for this rank's own random streams (crops, dropout): ``seed`` itself on rank 0,
    so one process draws exactly what it drew before there were ranks."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


@contextmanager
def process_group(ranks: Ranks, device: torch.device, cfg: DistConfig = DistConfig()) -> Iterator[Ranks]:
    """Join the process group for the block (nothing to do for :data:`SINGLE`) and leave it
    after; a :class:`PathosegError` raised inside names the rank it happened on."""
    if not ranks.distributed:
        yield ranks
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Ranks share the cores: without this each would start a thread per core and they
        # would fight over them (torchrun sets OMP_NUM_THREADS=1 itself, which is respected).
        torch.set_num_threads(max(1, available_slots(device)[0] // ranks.local_world_size))
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                                world_size=ranks.world_size, timeout=timedelta(minutes=cfg.timeout_minutes),
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as exc:
        raise PathosegError(f"{ranks.label()}: could not join the process group "
                            f"({_first_line(exc)})") from None
    try:
        yield ranks
    except PathosegError as exc:
        raise PathosegError(f"{ranks.label()}: {exc}") from exc
    finally:
        dist.destroy_process_group()


def train_sampler(dataset: Dataset, ranks: Ranks, seed: int) -> DistributedSampler:
    """This rank's share of every epoch's shuffled samples; call ``set_epoch`` each epoch.
    Padded by repeating samples so every rank takes the same number of steps."""
    return DistributedSampler(dataset, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True, seed=seed)


def wrap_model(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` (already on ``device``) in DDP; on CUDA its BatchNorm layers become
    SyncBatchNorm (in place, sharing the parameters, so an optimiser over ``model`` still
    holds them)."""
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Buffers are not broadcast each step: on CPU every rank's BatchNorm keeps its own
    # running statistics until average_buffers merges them at the end of the epoch.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_main(ranks: Ranks, *values: float) -> tuple[float, ...]:
    """Rank 0's ``values`` on every rank (the others wait for rank 0 here); as given in one process."""
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.broadcast(tensor, src=0)
    return tuple(tensor.tolist())


def mean_over_ranks(ranks: Ranks, value: float) -> float:
    """The mean of ``value`` over the ranks; ``value`` itself in one process."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.item() / ranks.world_size


@torch.no_grad()
def average_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so all
    hold the same model; integer buffers (batch counts) agree already."""
    if not ranks.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(ranks.world_size)


def global_sum(local: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The sum of ``local`` over the ranks, differentiable with respect to this rank's part.

    The gradient is scaled by the world size because DDP averages the ranks' gradients: the
    average of ``world_size * d(f(total))/d(local_r)`` over ranks is the gradient of
    ``f(total)`` with respect to all ranks' inputs, as one process on the global batch has it.
    """
    total = local.detach().clone()
    dist.all_reduce(total)
    return total + ranks.world_size * (local - local.detach())


class GlobalDiceLoss(torch.nn.Module):
    """smp's binary ``DiceLoss`` (from logits, ignore index, ``1 - dice``, zero where the batch
    has no foreground) computed on the global batch: its sums run over all ranks' crops.

    Dice is a ratio of sums over the batch, not a mean of per-crop terms, so averaging each
    rank's own Dice (what DDP alone would do) is not the Dice of the global batch.
    """

    def __init__(self, ranks: Ranks, ignore_index: float, eps: float = 1e-7) -> None:
        super().__init__()
        self.ranks = ranks
        self.ignore_index = ignore_index
        self.eps = eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = target.size(0)
        probs = F.logsigmoid(logits).exp().reshape(batch, 1, -1)
        target = target.reshape(batch, 1, -1)
        keep = target != self.ignore_index
        probs, target = probs * keep, (target * keep).type_as(probs)
        dims = (0, 2)
        local = torch.stack([(probs * target).sum(dims), (probs * (1 - target)).sum(dims),
                             ((1 - probs) * target).sum(dims), target.sum(dims)])
        inter, false_pos, false_neg, positives = global_sum(local, self.ranks)
        score = inter / (inter + 0.5 * false_pos + 0.5 * false_neg).clamp_min(self.eps)
        return ((1.0 - score) * (positives > 0).to(score.dtype)).mean()


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of local processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankTraceback(Exception):
    """The full traceback of a failed rank, attached as the cause of the one-line error
    (shown with ``pathoseg --debug``)."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _run_rank(local_rank: int, nproc: int, port: int, errors: Path,
              fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """One process of :func:`launch`: torchrun's environment, then ``fn``. A failure is
    written to ``errors`` for the parent, which reports the first one as one line."""
    os.environ.update({"RANK": str(local_rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    try:
        fn(*args)
    except Exception as exc:
        message = str(exc) if isinstance(exc, PathosegError) else f"{type(exc).__name__}: {_first_line(exc)}"
        report = {"message": message, "input": isinstance(exc, PathosegError), "time": time.time(),
                  "traceback": traceback.format_exc()}
        (errors / f"rank{local_rank}.json").write_text(json.dumps(report))
        raise SystemExit(1) from None


def _silent_crash(processes: list[Any], first: int, errors: Path) -> tuple[int, str] | None:
    """The rank that died without a report (out of memory, a signal, ``os._exit``) and how,
    in spawn's words: the one spawn saw fail first, else one that exited on its own (a
    positive code; the ranks spawn stopped have negative ones)."""
    order = [first, *(i for i, p in enumerate(processes) if i != first and (p.exitcode or 0) > 0)]
    for index in order:
        code = processes[index].exitcode
        if code and not (errors / f"rank{index}.json").exists():
            how = f"exit code {code}" if code > 0 else f"signal {_signal_name(-code)}"
            return index, f"process {index} terminated with {how}"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _root_cause(processes: list[Any], first: int, errors: Path) -> tuple[str, str | None]:
    """The one-line cause of a failed launch and the traceback behind it, if any: a problem
    with the input first, then a rank that died without a word (the others fail after it,
    when their peer is gone, and report the lost connection as their own error; which of
    them spawn notices first is a race), then the earliest report."""
    reports = [json.loads(p.read_text()) for p in sorted(errors.glob("rank*.json"))]
    inputs = [r for r in reports if r["input"]]
    if inputs:
        root = min(inputs, key=lambda r: r["time"])
        return root["message"], root["traceback"]
    crash = _silent_crash(processes, first, errors)
    if crash is not None:
        index, how = crash
        return f"training process {index} of {len(processes)} failed: {how}", None
    root = min(reports, key=lambda r: r["time"])
    return root["message"], root["traceback"]


def launch(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` new local processes that find each other as torchrun's
    would (``fn`` reads :func:`ranks_from_env`). When one fails the others are stopped and
    its error comes back as one :class:`PathosegError`."""
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    with tempfile.TemporaryDirectory(prefix="pathoseg-ranks-") as folder:
        errors = Path(folder)
        context = mp.spawn(_run_rank, args=(nproc, free_port(), errors, fn, args), nprocs=nproc, join=False)
        try:
            while not context.join():
                pass
        except ProcessException as exc:  # the others have been stopped by now
            message, trace = _root_cause(context.processes, exc.error_index, errors)
            raise PathosegError(message) from (RankTraceback(trace) if trace else None)
