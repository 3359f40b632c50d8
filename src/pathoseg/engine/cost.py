"""What a model costs: parameters, FLOPs, latency, peak training memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pathoseg.engine.predict import PredictConfig, predict_logits
from pathoseg.models import GlandSegmenter


def gflops(model: GlandSegmenter, size: int = 512) -> float:
    """Forward GFLOPs for one size x size RGB image (a multiply-add counts as 2 FLOPs)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def latency_ms(model: GlandSegmenter, cfg: PredictConfig, device: torch.device, shape=(522, 775),
               repeats: int = 5) -> float:
    """Median wall time of whole-image prediction (resize, pad, forward, upsample)."""
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    model.eval()
    predict_logits(model, image, cfg, device)  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predict_logits(model, image, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
