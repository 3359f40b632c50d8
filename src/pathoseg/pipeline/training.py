"""``pathoseg train``: dataset + split + model + training loop, into a run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pathoseg.data import SampleSet, load_dataset
from pathoseg.data.cache import load_scaled
from pathoseg.data.splits import Split, make_split
from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.engine.device import choose_device
from pathoseg.engine.distributed import (
    SINGLE,
    Ranks,
    check_local_processes,
    launch,
    per_rank_batch,
    process_group,
    rank_device,
    ranks_from_env,
)
from pathoseg.engine.settings import without_unused_additions
from pathoseg.engine.train import TrainConfig, TrainResult, resume_state, train_to_dir
from pathoseg.errors import PathosegError
from pathoseg.models import build_model
from pathoseg.runconfig import (
    SETTINGS_FILE,
    check_fingerprint,
    digest,
    remove_results,
    run_fingerprint,
    stored_settings,
    write_fingerprint,
)

SHARED_GLAS = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "glas"


NO_DATA = "no data: pass --data DIR (GlaS or images/ + masks/)"


def find_dataset(explicit: str | Path | None = None) -> Path | None:
    """The data set folder: ``--data``, then ``$PATHOSEG_DATA``, then GlaS at
    ``../shared/data/glas`` beside the checkout or the working folder; None when none is found."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PATHOSEG_DATA")
    if env:
        return Path(env)
    for cand in (Path.cwd() / ".." / "shared" / "data" / "glas", SHARED_GLAS):
        if cand.is_dir():
            return cand.resolve()
    return None


def require_dataset(explicit: str | Path | None = None) -> Path:
    """:func:`find_dataset`, or the one-line error saying how to name one."""
    found = find_dataset(explicit)
    if found is None:
        raise PathosegError(NO_DATA)
    return found


@dataclass
class DataPlan:
    data: SampleSet
    split: Split


def plan_data(data_path: str | Path, split_kind: str = "official", split_file: str | Path | None = None,
              seed: int = 0, val_fraction: float = 0.1) -> DataPlan:
    data = load_dataset(data_path)
    if split_file and Path(split_file).is_file():
        split = Split.load(split_file)
        split.check(data)
    else:
        split = make_split(data, split_kind, seed=seed, val_fraction=val_fraction)
        if split_file:
            split.save(split_file)
    return DataPlan(data, split)


# Settings that change no result: left out of a run's fingerprint.
NO_EFFECT = ("progress",)
# what a fresh start deletes
RUN_FILES = ("best.pt", "best-iou.pt", "best-f1.pt", "last.pt", "history.csv", SETTINGS_FILE)


def split_settings(split: Split | Mapping[str, Any]) -> dict:
    """A split among the settings: its kind, seed and (as a hash) which images go where.
    Where the data set lies is left out: a moved data set is the same data."""
    d = split.to_dict() if isinstance(split, Split) else dict(split)
    parts = {"train": d.get("train", []), "val": d.get("val", []), "test": d.get("test", {})}
    return {"kind": d.get("kind"), "seed": d.get("seed"), "images": digest(parts)}


def training_settings(cfg: TrainConfig | Mapping[str, Any], split: Split | Mapping[str, Any]) -> dict:
    """What a training run's results depend on: the training config (less progress bars) and
    the split. The device is left out: a run stopped on one device may resume on another."""
    d = without_unused_additions(cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg))
    return {**{k: v for k, v in d.items() if k not in NO_EFFECT}, "split": split_settings(split)}


def check_recipe(out: Path, recipes: Mapping[str, TrainConfig], chosen: str, split: Split) -> None:
    """Before a resume: stop with the recipe to add when the run in ``out`` was trained with
    another of ``recipes`` (name -> the config that recipe gives with this command's flags).
    A run no recipe explains is left to :func:`check_fingerprint`'s first difference."""
    old = stored_settings(out)
    if old is None:
        return
    fingerprint = run_fingerprint(old)
    made_by = [name for name, cfg in recipes.items() if run_fingerprint(training_settings(cfg, split)) == fingerprint]
    if made_by and chosen not in made_by:
        raise PathosegError(f"trained with --recipe {made_by[0]}, not {chosen}; add --recipe {made_by[0]} to "
                            "resume it (or --fresh to start it over)", out)


def run_training(plan: DataPlan, cfg: TrainConfig, out: Path, device: str | None = None,
                 resume: bool = False, nproc: int = 1) -> TrainResult:
    """Train into ``out`` (best.pt, last.pt, history.csv, split.json, settings.json).

    ``resume`` continues last.pt, but only when it was trained with the same settings
    (:func:`training_settings`; else a :class:`PathosegError` names the first difference).
    Without ``resume`` the run starts over: an earlier run's checkpoints and history in ``out``
    are deleted first, so a stop before the first epoch ends never leaves them looking current.

    ``nproc`` > 1 trains with DistributedDataParallel in that many new local processes; a
    process started by torchrun (RANK, WORLD_SIZE, ... in its environment) is one rank of a
    distributed run. Either way rank 0 alone writes into ``out``.
    """
    ranks = ranks_from_env()
    if nproc != 1:
        if ranks.distributed:
            raise PathosegError("--nproc is for a run on its own; under torchrun, --nproc_per_node says it")
        check_local_processes(nproc, choose_device(device))
        per_rank_batch(cfg.batch_size, nproc)
        launch(nproc, run_training, plan, cfg, out, device, resume)
        ckpt = load_checkpoint(out / "last.pt")
        return TrainResult(out / "best.pt", out / "last.pt", list(ckpt.history), resume_state(ckpt))
    if not ranks.distributed:
        return _train_in_process(plan, cfg, out, choose_device(device), resume)
    dev = rank_device(choose_device(device), ranks)
    check_local_processes(ranks.local_world_size, dev, "torchrun's --nproc_per_node")
    per_rank_batch(cfg.batch_size, ranks.world_size)
    with process_group(ranks, dev):
        return _train_in_process(plan, cfg, out, dev, resume, ranks)


def _train_in_process(plan: DataPlan, cfg: TrainConfig, out: Path, dev: torch.device, resume: bool,
                      ranks: Ranks = SINGLE) -> TrainResult:
    """:func:`run_training` in this process: alone, or as one of ``ranks``."""
    torch.manual_seed(cfg.seed)
    settings = training_settings(cfg, plan.split)
    state = None
    if resume:
        last = out / "last.pt"
        if not last.is_file():
            raise PathosegError("nothing to resume: no last.pt", out)
        ckpt = load_checkpoint(last)
        recorded = training_settings(ckpt.train_config, ckpt.split) if ckpt.train_config and ckpt.split else None
        check_fingerprint(out, settings, "the training run", fallback=recorded)
        if ckpt.model_config.preset != cfg.model.preset:
            raise PathosegError(f"trained with preset {ckpt.model_config.preset}, not {cfg.model.preset}", last)
        model = ckpt.build(dev)
        state = resume_state(ckpt)
    else:
        if ranks.is_main:
            remove_results(out, RUN_FILES)
        model = build_model(cfg.model)  # same seed on every rank; DDP starts all from rank 0's anyway
    if ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        plan.split.save(out / "split.json")
        write_fingerprint(out, settings)
    progress = cfg.progress and ranks.is_main
    train_pairs = load_scaled(plan.data.subset(plan.split.train), cfg.scale, progress)
    val_pairs = load_scaled(plan.data.subset(plan.split.val), cfg.scale, progress) if ranks.is_main else []
    split = {**plan.split.to_dict(), "data_root": str(plan.data.root)}  # lets evaluate find the data again
    return train_to_dir(model, train_pairs, val_pairs, cfg, dev, out, split, state, mpp=plan.data.mpp,
                        ranks=ranks)
