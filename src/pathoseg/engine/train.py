"""Training DeepLabV3+: augmented crops, BCE + Dice, AdamW with warm-up and cosine decay,
validation each epoch (pooled IoU and GlaS object F1), best/last checkpoints, resume,
optional wall-clock budget."""

from __future__ import annotations

import csv
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pathoseg.data.cache import IGNORE, CropDataset, ScaledPair
from pathoseg.data.targets import BOUNDARY_SIGMA, gland_pixels
from pathoseg.data.transforms import train_transform
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.engine.distributed import (
    SINGLE,
    GlobalDiceLoss,
    Ranks,
    average_buffers,
    from_main,
    mean_over_ranks,
    per_rank_batch,
    rank_seed,
    train_sampler,
    wrap_model,
)
from pathoseg.engine.instances import InstanceConfig, decode_instances, learned_min_size
from pathoseg.engine.predict import forward_padded
from pathoseg.engine.settings import SELECTIONS
from pathoseg.engine.settings import TrainConfig as TrainConfig  # re-exported: settings live there
from pathoseg.io import atomic_path
from pathoseg.metrics import ObjectTally, object_metrics, object_tally
from pathoseg.models import GlandSegmenter


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_iou: float
    val_f1: float
    lr: float
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(progress: float, base_lr: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 1% of ``base_lr``; ``progress`` in [0, 1]."""
    if progress < warmup:
        return base_lr * (0.1 + 0.9 * progress / warmup)
    p = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))


_MASKED = -1.0  # target value of pixels outside the valid mask (smp's ignore_index)


class SegmentationLoss(torch.nn.Module):
    """Sum over the head's channels; pixels of weight 0 (unlabelled) do not count.

    Each channel (gland, contour) is BCE + soft Dice: the contour band is a few percent of
    the pixels, and Dice keeps it from collapsing to background. BCE is the mean over all
    pixels of each pixel's BCE times its weight (smp's ``SoftBCEWithLogitsLoss`` with an
    ignore index when the weights are 0 or 1; torch's own weighted BCE, since smp's weight is
    one tensor for every batch).
    """

    def __init__(self, channels: tuple[str, ...] = ("gland",), ranks: Ranks = SINGLE) -> None:
        super().__init__()
        self.channels = channels
        # Across processes Dice needs the whole batch's sums (BCE, a mean, is averaged by DDP).
        self.dice = (GlobalDiceLoss(ranks, ignore_index=_MASKED) if ranks.distributed
                     else smp.losses.DiceLoss("binary", from_logits=True, ignore_index=_MASKED))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``logits`` and ``targets`` (N, C, H, W), ``weights`` (N, H, W): 0 where unlabelled."""
        weights = weights.unsqueeze(1).to(logits.dtype)  # a bool mask is weights 0 and 1
        masked = torch.where(weights > 0, targets, torch.full_like(targets, _MASKED))
        total = logits.new_zeros(())
        for c in range(len(self.channels)):
            out, target = logits[:, c:c + 1], targets[:, c:c + 1]
            bce = torch.nn.functional.binary_cross_entropy_with_logits(out, target, weight=weights)
            total = total + bce + self.dice(out, masked[:, c:c + 1])
        return total


@torch.inference_mode()
def validate(model: GlandSegmenter, pairs: Sequence[ScaledPair], device: torch.device,
             decoder: InstanceConfig) -> tuple[float, float]:
    """Pooled IoU (of the thresholded gland map) and GlaS object F1 (of the glands the
    ``decoder`` makes, sizes in working-scale pixels) over whole validation images at the
    working scale. Unlabelled pixels count for neither."""
    model.eval()
    inter = union = 0
    tally = ObjectTally()
    for pair in pairs:
        x = torch.from_numpy(pair.image).to(device).permute(2, 0, 1)[None].float().div_(255)
        logits = forward_padded(model, x, tta=False)[0].float().cpu()
        pred = (logits[0] > 0).numpy()
        valid = pair.target != IGNORE
        gt = gland_pixels(pair.target)
        inter += int((pred & gt & valid).sum())
        union += int(((pred | gt) & valid).sum())
        glands = decode_instances(dict(zip(model.head.channels, torch.sigmoid(logits).numpy(), strict=True)), decoder)
        tally += object_tally(np.where(valid, pair.target, 0), np.where(valid, glands, 0))
    return (inter / union if union else 1.0), object_metrics([tally])["f1"]


def write_history(path: Path, history: Sequence[dict]) -> None:
    if not history:
        return
    columns = list(dict.fromkeys(k for row in history for k in row))  # a resumed older run adds columns
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


@dataclass
class FitState:
    """What a resumed run needs: where it stopped and the optimiser's memory."""

    epoch: int = 0
    elapsed: float = 0.0
    history: list[dict] = field(default_factory=list)
    best_iou: float = -1.0
    best_f1: float = -1.0
    optimizer: dict | None = None


def fit(model: GlandSegmenter, train_pairs: Sequence[ScaledPair], val_pairs: Sequence[ScaledPair],
        cfg: TrainConfig, device: torch.device, state: FitState | None = None,
        on_epoch: Callable[[EpochRecord, GlandSegmenter, FitState, torch.optim.Optimizer], None] | None = None,
        ranks: Ranks = SINGLE, decoder: InstanceConfig | None = None) -> FitState:
    """Train ``model`` in place. The schedule runs on progress = max(epoch, time) fraction,
    so a wall-clock budget still ends with a fully decayed learning rate.

    In a distributed run (``ranks``, inside :func:`pathoseg.engine.distributed.process_group`)
    every rank calls this with its own device: each takes its share of the samples and of
    the global batch, DDP averages the gradients, rank 0 validates and calls ``on_epoch``, and
    rank 0's clock decides the schedule and the budget for all.

    ``decoder``: the instance decoder for the validation's object F1, sizes in native pixels
    (default: the decoder's defaults).
    """
    state = state or FitState()
    val_decoder = (decoder or InstanceConfig()).scaled(cfg.scale)
    seed = rank_seed(cfg.seed + state.epoch, ranks.rank)  # rank 0 (and one process): the seed itself
    seed_everything(seed)
    model.to(device)
    dataset = CropDataset(train_pairs, train_transform(cfg.crop, seed=seed), cfg.repeats, model.head.channels,
                          cfg.boundary_weight, BOUNDARY_SIGMA * cfg.scale)
    batch_size = per_rank_batch(cfg.batch_size, ranks.world_size)
    sampler = train_sampler(dataset, ranks, cfg.seed) if ranks.distributed else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=(len(sampler) if sampler else len(dataset)) > batch_size,
        num_workers=cfg.workers, pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
    )
    net = wrap_model(model, device) if ranks.distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    loss_fn = SegmentationLoss(model.head.channels, ranks)
    budget_s = cfg.budget_minutes * 60 if cfg.budget_minutes else None
    steps_per_epoch = max(1, len(loader))
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = tqdm(total=cfg.epochs, initial=state.epoch, desc="training", unit="epoch",
               disable=not cfg.progress or not ranks.is_main, dynamic_ncols=True)
    while state.epoch < cfg.epochs:
        net.train()
        if sampler:
            sampler.set_epoch(state.epoch)
        start = time.perf_counter()
        losses = []
        for step, (x, y, weights) in enumerate(loader):
            progress = (state.epoch + step / steps_per_epoch) / cfg.epochs
            if budget_s:
                (spent,) = from_main(ranks, state.elapsed + time.perf_counter() - start)  # one schedule for all
                progress = max(progress, spent / budget_s)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(min(progress, 1.0), cfg.lr, cfg.warmup)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            weights = weights.to(device, non_blocking=True)
            with amp:
                loss = loss_fn(net(x).float(), y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        average_buffers(model, ranks)
        val_iou, val_f1 = (validate(model, val_pairs, device, val_decoder) if val_pairs and ranks.is_main
                           else (float("nan"), float("nan")))
        seconds = time.perf_counter() - start
        # Rank 0's clock and validation for all (the others wait here): the ranks stop together.
        seconds, val_iou, val_f1 = from_main(ranks, seconds, val_iou, val_f1)
        state.elapsed += seconds
        state.epoch += 1
        record = EpochRecord(state.epoch, mean_over_ranks(ranks, float(np.mean(losses))), val_iou, val_f1,
                             optimizer.param_groups[0]["lr"], seconds)
        state.history.append(asdict(record))
        bar.update(1)
        bar.set_postfix(loss=f"{record.train_loss:.3f}", val_iou=f"{val_iou:.3f}", val_f1=f"{val_f1:.3f}")
        if on_epoch and ranks.is_main:
            on_epoch(record, model, state, optimizer)
        if budget_s and state.elapsed >= budget_s:
            break
    bar.close()
    model.eval()
    return state


@dataclass
class TrainResult:
    best: Path
    last: Path
    history: list[dict]
    state: FitState


def train_to_dir(model: GlandSegmenter, train_pairs: Sequence[ScaledPair], val_pairs: Sequence[ScaledPair],
                 cfg: TrainConfig, device: torch.device, out: Path, split: dict | None = None,
                 state: FitState | None = None, mpp: float | None = None, ranks: Ranks = SINGLE) -> TrainResult:
    """:func:`fit` plus ``best.pt``, ``last.pt`` and ``history.csv`` written each epoch (by rank 0).

    ``best.pt`` is the epoch best by ``cfg.select`` on the validation images (pooled IoU or
    object F1); ``best-<other>.pt`` the best by the other, so the two rules can be compared on
    one run. Without validation images the best checkpoint is the last one. The checkpoints
    carry the instance decoder's gland size floor learned from the training masks (validation
    decodes with it too), and ``mpp``, the training images' native µm per pixel (None: unknown).
    """
    min_size = learned_min_size((p.target for p in train_pairs), cfg.scale)
    instances = {"min_size": min_size} if min_size else {}
    out.mkdir(parents=True, exist_ok=True)
    last = out / "last.pt"
    best = {m: out / ("best.pt" if m == cfg.select else f"best-{m}.pt") for m in SELECTIONS}

    def checkpoint(st: FitState, model: GlandSegmenter, opt: dict | None) -> Checkpoint:
        latest = st.history[-1] if st.history else {}
        return Checkpoint.of(
            model, cfg.scale, train_config=cfg.to_dict(), split=split, epoch=st.epoch,
            metrics={"val_iou": latest.get("val_iou", float("nan")), "val_f1": latest.get("val_f1", float("nan")),
                     "best_val_iou": st.best_iou, "best_val_f1": st.best_f1, "elapsed": st.elapsed},
            history=list(st.history), optimizer=opt, instances=instances, mpp=mpp,
        )

    def on_epoch(record: EpochRecord, model: GlandSegmenter, st: FitState, opt: torch.optim.Optimizer) -> None:
        improved = {"iou": not val_pairs or record.val_iou > st.best_iou,
                    "f1": bool(val_pairs) and record.val_f1 > st.best_f1}
        if val_pairs:
            st.best_iou, st.best_f1 = max(st.best_iou, record.val_iou), max(st.best_f1, record.val_f1)
        checkpoint(st, model, opt.state_dict()).save(last)
        for metric, path in best.items():
            if improved[metric] or (metric == cfg.select and not val_pairs):
                checkpoint(st, model, None).save(path)
        write_history(out / "history.csv", st.history)

    decoder = InstanceConfig(**instances)
    state = fit(model, train_pairs, val_pairs, cfg, device, state, on_epoch, ranks, decoder)
    return TrainResult(best[cfg.select], last, state.history, state)


def resume_state(ckpt: Checkpoint) -> FitState:
    return FitState(epoch=ckpt.epoch, elapsed=float(ckpt.metrics.get("elapsed", 0.0)),
                    history=list(ckpt.history), best_iou=float(ckpt.metrics.get("best_val_iou", -1.0)),
                    best_f1=float(ckpt.metrics.get("best_val_f1", -1.0)), optimizer=ckpt.optimizer)
