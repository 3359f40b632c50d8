"""``pathoseg demo``: the main job for a new user — train, evaluate, report, in one command."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from pathoseg.data.synthetic import write_synthetic
from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.device import choose_device
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.train import TrainConfig
from pathoseg.pipeline.evaluation import EvaluationOutputs, evaluate_parts, model_segmenter, write_outputs
from pathoseg.pipeline.training import find_dataset, plan_data, run_training


@dataclass
class DemoResult:
    data_path: Path
    synthetic: bool
    outputs: EvaluationOutputs
    checkpoint: Path


def demo_config(quick: bool, synthetic: bool) -> TrainConfig:
    """Budgets keep the demo within 15 minutes on 2 CPU cores (3 minutes with ``--quick``)."""
    cfg = TrainConfig()
    if synthetic:
        cfg = replace(cfg, crop=160, scale=1.0, epochs=12 if quick else 40)
    return replace(cfg, budget_minutes=1.5 if quick else 10.0)


def run_demo(out: Path, data: str | Path | None = None, quick: bool = False, device: str | None = None,
             cfg: TrainConfig | None = None, log=print, epochs: int | None = None,
             budget: float | None = None) -> DemoResult:
    found = find_dataset(data)
    synthetic = found is None or not Path(found).is_dir()
    if synthetic:
        if found is not None:
            log(f"{found}: not found; using a synthetic H&E-like data set instead")
        found = write_synthetic(out / "synthetic-data", n=48, seed=0)
        log(f"no GlaS data found: wrote a synthetic data set to {found}")
    else:
        log(f"using GlaS at {found}")
    cfg = cfg or demo_config(quick, synthetic)
    cfg = replace(cfg, epochs=epochs or cfg.epochs, budget_minutes=budget or cfg.budget_minutes)
    plan = plan_data(found, "official", seed=cfg.seed)
    log(f"training DeepLabV3+ ({cfg.model.preset}) on {len(plan.split.train)} images "
        f"(budget {cfg.budget_minutes} min, device {choose_device(device)})")
    result = run_training(plan, cfg, out / "model", device)
    dev = choose_device(device)
    model, ckpt = load_model(result.best, dev)
    segment = model_segmenter(model, PredictConfig(scale=ckpt.scale), ckpt.instance_config(), dev)
    results = evaluate_parts(plan.data, plan.split, segment, progress=cfg.progress)
    outputs = write_outputs(results, out, "pathoseg demo: DeepLabV3+ gland segmentation", history=result.history)
    return DemoResult(Path(found), synthetic, outputs, result.best)
