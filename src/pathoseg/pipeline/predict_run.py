"""``pathoseg predict`` as a request: images and whole slides through a model, with every check
made before anything is written (the command line only fills the request)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pathoseg.data.resolution import AUTO, parse_mpp
from pathoseg.engine.backends import BackendConfig, load_backend
from pathoseg.engine.device import choose_device
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig
from pathoseg.errors import PathosegError
from pathoseg.pipeline.prediction import (
    collect_inputs,
    estimate_input_mpps,
    estimate_line,
    file_digest,
    min_size_from_area,
    model_mpp_of,
    need_model_mpp,
    open_slides,
    predict_files,
    predict_slides,
    resolution_configs,
    slide_config,
)


@dataclass(frozen=True)
class PredictRequest:
    checkpoint: str
    inputs: tuple[str, ...]
    out: str
    backend: BackendConfig = field(default_factory=BackendConfig)
    ray: object | None = None  # a pathoseg.pipeline.ray_engine.RayConfig: --engine ray
    device: str | None = None
    mpp: str | float | None = None  # the inputs' µm/px, or "auto"
    model_mpp: float | None = None  # for checkpoints that do not record theirs
    region: str | None = None  # slides: x,y,w,h in level-0 pixels
    tile: int | None = None
    tta: bool = False
    tta_scales: tuple[float, ...] = ()  # images only: multi-scale test-time augmentation
    instances: str = InstanceConfig.method
    min_size: int | None = None  # native pixels
    min_area: float | None = None  # µm²


def run_predict(req: PredictRequest, say: Callable[[str], None] = print) -> None:
    device = choose_device(req.device)
    model, ckpt = load_backend(req.checkpoint, req.backend, device)
    images, slides = collect_inputs(req.inputs)  # every check before anything is written
    first = (images or slides)[0]
    parsed = parse_mpp(req.mpp, "--mpp", first)
    auto_mpp, mpp = parsed == AUTO, parsed if parsed != AUTO else None
    if req.min_size is not None and req.min_area is not None:
        raise PathosegError("pass --min-size (pixels) or --min-area (µm²), not both")
    if req.tta_scales and slides:
        raise PathosegError("--tta-scales applies to images; whole slides average over flips only (--tta)",
                            slides[0])
    if req.region is not None and not slides:
        raise PathosegError("--region applies to whole-slide images; none given", first)
    slide_cfg = slide_config(req.tile, req.tta, slides[0]) if slides else None
    model_mpp = model_mpp_of(ckpt, req.model_mpp, req.checkpoint)
    pcfg = PredictConfig(scale=ckpt.scale, tta=req.tta, tile=req.tile, tta_scales=req.tta_scales)
    icfg = ckpt.instance_config(method=req.instances, min_size=req.min_size)
    icfg = min_size_from_area(icfg, req.min_area, model_mpp, req.checkpoint)
    if slides:
        need_model_mpp(model_mpp, req.checkpoint, "for whole-slide images")
    if images and (mpp is not None or auto_mpp):
        need_model_mpp(model_mpp, req.checkpoint, "for --mpp")
    # Plain images of unknown resolution: estimated from their content when the model's is known
    # (here for --engine ray too, so that its workers resample each image as this process would).
    input_mpps = None
    if images and mpp is None and model_mpp is not None:
        estimates = estimate_input_mpps(images, model_mpp)
        for path, (used, est) in estimates.items():
            line = estimate_line(path, used, est, model_mpp)
            if line:
                say(line)
        input_mpps = {path: used for path, (used, _) in estimates.items()}
    opened = open_slides(slides, mpp, req.region, estimate=auto_mpp)
    for slide, _ in opened:
        if slide.mpp_estimate is not None:
            est = slide.mpp_estimate
            say(f"estimated {est.mpp:.2f} µm/px (confidence {est.confidence:.1f}, {est.note}) for "
                f"{slide.path.name}, which has no resolution metadata")
    out = Path(req.out)
    img_pcfg, img_icfg = resolution_configs(pcfg, icfg, mpp, model_mpp)
    identity = {"checkpoint": file_digest(req.checkpoint), **req.backend.identity()} if opened else None
    if req.ray is not None:
        from pathoseg.pipeline.ray_engine import PredictJob, predict_on_ray

        for slide, _ in opened:  # each worker opens the slides it is given
            slide.close()
        job = PredictJob(out, req.device, img_pcfg, img_icfg, icfg, slide_cfg, mpp, model_mpp, ckpt.scale, identity,
                         input_mpps, {slide.path: slide.mpp for slide, _ in opened})
        _, runs = predict_on_ray(ckpt, images, [(slide.path, region) for slide, region in opened], job, req.ray)
    else:
        try:
            if images:
                predict_files(model, images, out, img_pcfg, img_icfg, device, input_mpps=input_mpps,
                              model_mpp=model_mpp)
        except BaseException:
            for slide, _ in opened:
                slide.close()
            raise
        runs = predict_slides(model, opened, out / "slides", model_mpp, ckpt.scale, icfg, device, slide_cfg,
                              identity) if opened else []
    if images:
        say(f"{len(images)} images -> {out}/masks, {out}/instances, {out}/overlays")
    for (slide, _), run in zip(opened, runs, strict=True):
        say(f"{slide.path.name}: {run.glands} glands in {run.tissue_mpx:.1f} MP of tissue ({run.seconds:.0f} s) -> "
            f"{run.outputs['geojson']}, {run.outputs['mask']}, {run.outputs['overview']}")
