"""``pathoseg evaluate`` as a request: a model's (or a folder of) predictions scored on a data
set's test parts, with the pictures and the report (the command line only fills the request)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pathoseg.engine.backends import BackendConfig, load_backend
from pathoseg.engine.device import choose_device
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig
from pathoseg.errors import PathosegError
from pathoseg.metrics.anatomy import DEFAULT_TOLERANCE_UM
from pathoseg.pipeline.evaluation import (
    data_input_mpp,
    evaluate_parts,
    folder_segmenter,
    metrics_lines,
    model_segmenter,
    write_outputs,
)
from pathoseg.pipeline.prediction import model_mpp_of
from pathoseg.pipeline.training import find_dataset, plan_data

SPLIT_KINDS = ("official", "random")


@dataclass(frozen=True)
class EvaluateRequest:
    out: str
    checkpoint: str | None = None  # a model to evaluate, or
    predictions: str | None = None  # a folder of its predictions
    data: str | None = None  # default: the checkpoint's data set
    split_kind: str = "official"
    parts: tuple[str, ...] | None = None  # test parts ("test": all); default all
    split_file: str | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    device: str | None = None
    mpp: str | float | None = None  # the data's µm/px, or "auto"
    tta: bool = False
    tta_scales: tuple[float, ...] = ()  # multi-scale test-time augmentation (PredictConfig.tta_scales)
    tile: int | None = None
    instances: str = InstanceConfig.method
    min_size: int | None = None
    json: str | None = None  # also write the metrics here
    pictures: bool = True
    anatomy_um: float = DEFAULT_TOLERANCE_UM  # error anatomy: an outline this close to the truth is right


def parse_split(split: str, split_part: str | None) -> tuple[str, tuple[str, ...] | None]:
    """``--split`` names a split kind (official, random) or the test part(s) to evaluate."""
    if split in SPLIT_KINDS:
        return split, tuple(split_part.split(",")) if split_part else None
    return "official", tuple(p.strip() for p in split.split(",") if p.strip())


def run_evaluate(req: EvaluateRequest, say: Callable[[str], None] = print) -> dict:
    """Score, write metrics.json, the pictures and the report; returns the metrics."""
    if not (isinstance(req.anatomy_um, int | float) and math.isfinite(req.anatomy_um) and req.anatomy_um > 0):
        raise PathosegError(f"--anatomy-tolerance must be a positive number of µm, not {req.anatomy_um}")
    if req.predictions:
        data = find_dataset(req.data)
        if data is None:
            raise PathosegError("--predictions needs --data (the ground truth)")
        plan = plan_data(data, req.split_kind, req.split_file)
        if req.mpp is not None:
            raise PathosegError("--mpp applies to a model's predictions, not to --predictions")
        segment, history = folder_segmenter(Path(req.predictions)), None
    elif req.checkpoint:
        device = choose_device(req.device)
        model, ckpt = load_backend(req.checkpoint, req.backend, device)
        if req.data or req.split_file or not ckpt.split:
            data = find_dataset(req.data)
            if data is None:
                raise PathosegError("pass --data: the data set to evaluate on")
            plan = plan_data(data, req.split_kind, req.split_file)
        else:  # the checkpoint remembers its data set and split
            from pathoseg.data.splits import Split

            data = ckpt.split.get("data_root") or find_dataset(None)
            if data is None or not Path(data).is_dir():
                raise PathosegError(f"pass --data: the checkpoint's data set ({data}) was not found")
            plan = plan_data(data, req.split_kind)
            plan.split = Split.from_dict(ckpt.split, req.checkpoint)
            plan.split.check(plan.data)
        pcfg = PredictConfig(scale=ckpt.scale, tta=req.tta, tile=req.tile, tta_scales=req.tta_scales)
        icfg = ckpt.instance_config(method=req.instances, min_size=req.min_size)
        model_mpp = model_mpp_of(ckpt, None, req.checkpoint)
        input_mpp = data_input_mpp(plan.data, req.mpp, model_mpp, req.checkpoint)
        segment, history = model_segmenter(model, pcfg, icfg, device, input_mpp, model_mpp), ckpt.history
    else:
        raise PathosegError("pass a checkpoint (pathoseg evaluate runs/x/best.pt) or --predictions DIR")
    parts = list(req.parts) if req.parts else None
    if parts and "test" in parts:  # "test" = every test part of the split
        parts = list(plan.split.test)
    results = evaluate_parts(plan.data, plan.split, segment, parts, keep_pictures=req.pictures,
                             anatomy_um=req.anatomy_um)
    outputs = write_outputs(results, Path(req.out), "pathoseg evaluation", history,
                            json_path=Path(req.json) if req.json else None, pictures=req.pictures)
    say("\n".join(metrics_lines(outputs.metrics)))
    say(f"metrics: {outputs.metrics_json}" + (f"; report: {outputs.report}" if outputs.report else ""))
    return outputs.metrics
