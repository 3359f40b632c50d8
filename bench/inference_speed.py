"""Inference backends side by side: megapixels per second at the model's working scale and
pooled IoU on the GlaS test, for each model on PyTorch eager fp32, eager channels-last,
``torch.compile`` (with ``--compile``), ONNX Runtime fp32 and ONNX Runtime int8.

    python bench/inference_speed.py --models runs/bench-instances/seed0/best.pt,lite2 \\
        --data ../shared/data/glas [--threads 2] [--compile] [--sweep] [--limit 4]

``--models`` takes checkpoints, or preset names for an untrained head on the ImageNet encoder
(the same network cost, so speed rows only: their ``iou_pooled`` is null and ``weights`` says
so). Speed: every test image once through ``predict_logits`` at working scale (resize, pad to
the stride, forward; no decoding) after one warm-up image, ``--repeats`` times, best repeat.
IoU: the normal evaluation path (``evaluate_parts`` with the model's instance decoder) on
the same images. int8 is calibrated on the training images of ``--data`` (never test
images). ONNX exports are cached in ``--work`` (not beside the checkpoints). ``--sweep``
also times ONNX Runtime's intra-op threads (1, 2, default) x graph optimisation levels.

Writes ``--json`` (default ``docs/results/inference_speed.json``; with ``--limit``,
``WORK/inference_speed.json``) as ``{"command", "device", "rows": [{"model", "backend",
"precision", "mpix_per_s", "iou_pooled", ...}]}`` and prints the ratios to eager fp32.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pathoseg.data.resolution import resample_image
from pathoseg.engine.backends import BackendConfig, OnnxRuntimeConfig, load_backend
from pathoseg.engine.checkpoint import Checkpoint, load_model
from pathoseg.engine.predict import PredictConfig, predict_logits
from pathoseg.errors import PathosegError
from pathoseg.io import write_json
from pathoseg.models import ModelConfig, build_model
from pathoseg.models.registry import PRESETS
from pathoseg.pipeline.evaluation import evaluate_parts, model_segmenter, summarize_parts
from pathoseg.pipeline.export import calibration_images
from pathoseg.pipeline.training import find_dataset, plan_data

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED = "untrained head on the ImageNet encoder (speed only)"


class Wrapped:
    """A model behind a different call (channels-last input, a compiled forward), with what
    prediction reads from it."""

    def __init__(self, model, call: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.model, self.call = model, call
        self.stride, self.head, self.config = model.stride, model.head, model.config

    def eval(self) -> Wrapped:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(x)


def channels_last(model) -> Wrapped:
    model = model.to(memory_format=torch.channels_last)
    return Wrapped(model, lambda x: model(x.contiguous(memory_format=torch.channels_last)))


def compiled(model) -> Wrapped:
    fn = torch.compile(model, dynamic=True)  # GlaS images come in several sizes
    return Wrapped(model, fn)


def device_line(threads: int | None) -> str:
    import onnxruntime

    cpu = platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
        cpu = f"{names[0] if names else cpu}, {len(names)} logical cores"
    return (f"CPU: {cpu}; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
            f"{onnxruntime.__version__} ({threads or 'default'} intra-op threads)")


def load_spec(spec: str, work: Path) -> tuple[Path, str, bool]:
    """(checkpoint path, model name, trained) for a checkpoint path or a preset name."""
    path = Path(spec)
    if path.is_file():
        _, ckpt = load_model(path)
        return path, f"{ckpt.model_config.preset} ({spec})", True
    if spec not in PRESETS:
        raise PathosegError(f"neither a checkpoint nor a preset ({', '.join(PRESETS)})", spec)
    torch.manual_seed(0)
    model = build_model(ModelConfig(spec))  # ImageNet encoder, untrained head
    out = Checkpoint.of(model, 1.0, mpp=0.62).save(work / f"{spec}-untrained.pt")
    return out, f"{spec} (untrained head)", False


def throughput(model, images: list[np.ndarray], scale: float, repeats: int) -> float:
    """Megapixels per second at working scale through ``predict_logits`` (best of ``repeats``)."""
    cfg = PredictConfig(scale=scale)
    mpix = sum(np.prod(resample_image(im, scale).shape[:2]) for im in images) / 1e6
    predict_logits(model, images[0], cfg, native=False)  # warm-up: allocation, lazy initialisation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            predict_logits(model, image, cfg, native=False)
        best = min(best, time.perf_counter() - start)
    return mpix / best


def variants(args: argparse.Namespace, ckpt_path: Path, backend: BackendConfig):
    """(backend, precision, variant, builder) rows for one model."""
    yield "eager", "fp32", "", lambda: load_model(ckpt_path)[0]
    yield "eager", "fp32", "channels_last", lambda: channels_last(load_model(ckpt_path)[0])
    if args.compile:
        yield "compile", "fp32", "", lambda: compiled(load_model(ckpt_path)[0])
    yield "onnx", "fp32", "", lambda: load_backend(ckpt_path, backend)[0]
    yield "onnx", "int8", "", lambda: load_backend(ckpt_path, replace(backend, int8=True))[0]


def sweep(ckpt_path: Path, backend: BackendConfig, images: list[np.ndarray], scale: float, repeats: int) -> list:
    rows = []
    for int8 in (False, True):
        for threads in (1, 2, 0):
            for level in ("basic", "extended", "all"):
                cfg = replace(backend, int8=int8, runtime=OnnxRuntimeConfig(threads, level))
                speed = throughput(load_backend(ckpt_path, cfg)[0], images, scale, repeats)
                rows.append({"precision": cfg.precision, "intra_op_threads": threads, "graph_optimization": level,
                             "mpix_per_s": round(speed, 4)})
                print(f"  sweep {cfg.precision} threads={threads or 'default'} {level}: {speed:.3f} MP/s", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="runs/bench-instances/seed0/best.pt,lite2",
                    help="comma-separated checkpoints or preset names (untrained head: speed only)")
    ap.add_argument("--data", help="GlaS (default: $PATHOSEG_DATA or ../shared/data/glas)")
    ap.add_argument("--limit", type=int, help="only the first N test images (a smoke test)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads and ONNX Runtime intra-op threads (default: theirs)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (needs a C++ compiler)")
    ap.add_argument("--sweep", action="store_true", help="also time ONNX Runtime threads x optimisation levels")
    ap.add_argument("--work", default="runs/onnx-bench", help="ONNX exports and untrained checkpoints")
    ap.add_argument("--json")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else (work / "inference_speed.json" if args.limit
                                                   else ROOT / "docs" / "results" / "inference_speed.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = find_dataset(args.data)
    if data is None:
        sys.exit("GlaS not found: pass --data")
    plan = plan_data(data, "official")
    names = [(part, n) for part, ns in plan.split.test.items() for n in ns][:args.limit]
    plan.split.test = {p: [n for q, n in names if q == p] for p in plan.split.test}
    plan.split.test = {p: ns for p, ns in plan.split.test.items() if ns}
    images = [plan.data[n].load()[0] for _, n in names]
    backend = BackendConfig("onnx", calibration=calibration_images(None, data), cache_dir=work / "onnx",
                            runtime=OnnxRuntimeConfig(intra_op_threads=args.threads or 0))
    print(f"{len(images)} GlaS test images; int8 calibrated on {len(backend.calibration)} training images", flush=True)

    rows, settings = [], {}
    for spec in args.models.split(","):
        ckpt_path, name, trained = load_spec(spec.strip(), work)
        _, ckpt = load_model(ckpt_path)
        eager = None
        for kind, precision, variant, build in variants(args, ckpt_path, backend):
            label = f"{name} {kind} {precision} {variant}".strip()
            try:
                model = build()
                speed = throughput(model, images, ckpt.scale, args.repeats)
            except Exception as exc:  # torch.compile can fail offline or without a compiler: say so, go on
                print(f"{label}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
                rows.append({"model": name, "backend": kind, "precision": precision, "variant": variant,
                             "mpix_per_s": None, "iou_pooled": None, "skipped": f"{type(exc).__name__}"})
                continue
            iou = None
            if trained:
                segment = model_segmenter(model, PredictConfig(scale=ckpt.scale), ckpt.instance_config(), "cpu")
                results = evaluate_parts(plan.data, plan.split, segment, progress=False, keep_pictures=False)
                iou = summarize_parts(results)["test" if len(plan.split.test) > 1 else names[0][0]]["iou_pooled"]
            eager = eager or speed
            row = {"model": name, "backend": kind, "precision": precision, "variant": variant,
                   "mpix_per_s": round(speed, 4), "iou_pooled": None if iou is None else round(iou, 5),
                   "speedup_vs_eager": round(speed / eager, 3),
                   "weights": "trained checkpoint" if trained else UNTRAINED}
            rows.append(row)
            base_iou = next((r["iou_pooled"] for r in rows if r["model"] == name and r["backend"] == "eager"), None)
            delta = "" if iou is None or base_iou is None else f", IoU {iou:.4f} ({iou - base_iou:+.4f})"
            print(f"{label}: {speed:.3f} MP/s ({speed / eager:.2f}x eager){delta}", flush=True)
        if args.sweep:
            settings[name] = sweep(ckpt_path, backend, images, ckpt.scale, args.repeats)

    result = {"command": shlex.join(["python", "bench/inference_speed.py", *sys.argv[1:]]),
              "device": device_line(args.threads), "images": len(images), "rows": rows}
    if settings:
        result["ort_settings"] = settings
    write_json(json_path, result)
    print(f"-> {json_path}")


if __name__ == "__main__":
    main()
