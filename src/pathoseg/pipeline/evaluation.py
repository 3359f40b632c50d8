"""``pathoseg evaluate``: pixel and GlaS object metrics per test part, overlap pictures, report."""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pathoseg.data.glas import GLAS_MPP
from pathoseg.data.images import BinaryMaskWarning, read_mask
from pathoseg.data.mpp_estimate import auto_mpp
from pathoseg.data.resolution import AUTO, parse_mpp
from pathoseg.data.samples import Sample, SampleSet
from pathoseg.data.splits import Split
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.mpp_regressor import MppRegressor
from pathoseg.engine.predict import PredictConfig, predict_instances
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path, write_json
from pathoseg.metrics import ObjectTally, object_metrics, object_tally, pixel_counts, pixel_summary
from pathoseg.metrics.anatomy import DEFAULT_TOLERANCE_UM, ERROR_KINDS, ErrorTally, error_tally
from pathoseg.metrics.pixel import PixelCounts
from pathoseg.models import GlandSegmenter
from pathoseg.pipeline.prediction import need_model_mpp, resolution_configs
from pathoseg.viz.figures import (
    Panel,
    figure_png_bytes,
    gallery_figure,
    learning_curve_figure,
    panel_figure,
    save_figure,
)
from pathoseg.viz.overlay import instance_overlap_image
from pathoseg.viz.report import Report, image_html

METRIC_KEYS = ("iou_pooled", "iou_mean", "dice_pooled", "dice_mean", "f1", "object_dice", "object_hausdorff")


@dataclass
class ImageResult:
    name: str
    part: str
    grade: str
    counts: PixelCounts
    tally: ObjectTally
    overlap: np.ndarray | None = field(default=None, repr=False)  # picture, kept for the gallery
    errors: ErrorTally = field(default_factory=ErrorTally)  # the error anatomy

    @property
    def iou(self) -> float:
        return self.counts.iou

    def row(self) -> dict:
        return {"name": self.name, "part": self.part, "grade": self.grade, "iou": self.counts.iou,
                "dice": self.counts.dice, "tp": self.tally.tp, "fp": self.tally.fp, "fn": self.tally.fn,
                **{kind: getattr(self.errors, kind) for kind in ERROR_KINDS}}


def score_image(sample: Sample, part: str, gt: np.ndarray, seg: np.ndarray,
                image: np.ndarray | None = None, tolerance_px: float | None = None) -> ImageResult:
    """Pixel and object tallies, the overlap picture (with ``image``) and, with
    ``tolerance_px``, the error anatomy (:mod:`pathoseg.metrics.anatomy`)."""
    if gt.shape != seg.shape:
        raise PathosegError(
            f"prediction size {seg.shape[::-1]} does not match ground truth {gt.shape[::-1]}", sample.name
        )
    picture = instance_overlap_image(image, gt, seg) if image is not None else None
    errors = error_tally(gt, seg, tolerance_px) if tolerance_px is not None else ErrorTally()
    return ImageResult(sample.name, part, sample.grade, pixel_counts(gt, seg), object_tally(gt, seg), picture,
                       errors)


def summarize(results: Sequence[ImageResult]) -> dict:
    errors = sum((r.errors for r in results), ErrorTally())
    return {**pixel_summary(r.counts for r in results), **object_metrics(r.tally for r in results),
            "n_images": len(results), "errors": errors.as_dict()}


def headline_part(metrics: dict[str, dict]) -> str:
    """The part a one-number summary reports: ``test`` (all parts) when there, else the only one."""
    return "test" if "test" in metrics else next(iter(metrics))


def summarize_parts(results: Sequence[ImageResult]) -> dict[str, dict]:
    """One entry per part, plus ``test`` for all parts together when there are several."""
    parts: dict[str, list[ImageResult]] = {}
    for r in results:
        parts.setdefault(r.part, []).append(r)
    table = {p: summarize(rs) for p, rs in parts.items()}
    if len(parts) > 1:
        table["test"] = summarize(results)
    return table


Segmenter = Callable[[Sample, np.ndarray], np.ndarray]  # (sample, image) -> instance labels


def evaluate_parts(data: SampleSet, split: Split, segment: Segmenter, parts: Sequence[str] | None = None,
                   progress: bool = True, keep_pictures: bool = True,
                   anatomy_um: float | None = DEFAULT_TOLERANCE_UM) -> list[ImageResult]:
    """Score ``segment`` on the chosen test parts of the split (all parts by default), with
    the error anatomy at an outline tolerance of ``anatomy_um`` µm (None: none), converted
    with the data set's µm/px (GlaS's when unknown)."""
    if anatomy_um is not None and not (math.isfinite(anatomy_um) and anatomy_um > 0):
        raise PathosegError(f"the error-anatomy tolerance must be a positive number of µm, not {anatomy_um}")
    tolerance_px = anatomy_um / (data.mpp or GLAS_MPP) if anatomy_um is not None else None
    chosen = list(parts or split.test)
    unknown = [p for p in chosen if p not in split.test]
    if unknown:
        raise PathosegError(f"split has no part {unknown[0]!r}; it has {', '.join(split.test)}")
    jobs = [(data[n], p) for p in chosen for n in split.test[p]]
    results = []
    for sample, part in tqdm(jobs, desc="evaluating", unit="img", disable=not progress, leave=False):
        image, gt = sample.load()
        if gt is None:
            raise PathosegError("evaluation needs a mask", sample.image_path)
        results.append(score_image(sample, part, gt, segment(sample, image), image if keep_pictures else None,
                                   tolerance_px))
    return results


InputMpp = Callable[[Sample, np.ndarray], float | None]  # (sample, image) -> its µm/px; None = the model's


def model_segmenter(model: GlandSegmenter, pcfg: PredictConfig, icfg: InstanceConfig,
                    device: torch.device, input_mpp: InputMpp | None = None,
                    model_mpp: float | None = None) -> Segmenter:
    """The model's glands; with ``input_mpp``, each image resampled from its µm/px to ``model_mpp``'s."""
    if input_mpp is None:
        return lambda sample, image: predict_instances(model, image, pcfg, icfg, device)[0]

    def segment(sample: Sample, image: np.ndarray) -> np.ndarray:
        image_pcfg, image_icfg = resolution_configs(pcfg, icfg, input_mpp(sample, image), model_mpp)
        return predict_instances(model, image, image_pcfg, image_icfg, device)[0]

    return segment


def data_input_mpp(data: SampleSet, given: str | None, model_mpp: float | None,
                   checkpoint: str | Path) -> InputMpp | None:
    """What ``evaluate`` resamples from: ``--mpp`` (a number, or ``auto``: estimated per image
    from its content), else the data set's own µm/px (GlaS 0.62, ``mpp.txt``/``dataset.json``);
    None (images taken to be at the model's resolution) when that is unknown."""
    parsed = parse_mpp(given, "--mpp", data.root)
    if parsed == AUTO:
        known = need_model_mpp(model_mpp, checkpoint, "for --mpp auto")
        estimator = MppRegressor()
        return lambda sample, image: auto_mpp(sample.image_path, image, known, estimator=estimator)[0]
    data_mpp = parsed if given is not None else data.mpp
    if data_mpp is None or (model_mpp is None and given is None):
        return None
    known = need_model_mpp(model_mpp, checkpoint, "for --mpp")
    return None if data_mpp == known else (lambda sample, image: data_mpp)


def folder_segmenter(pred_dir: Path) -> Segmenter:
    """Precomputed ``<name>.png`` per image: a label map, or a 0/255 mask labelled here."""
    if not pred_dir.is_dir():
        raise PathosegError("predictions folder not found", pred_dir)

    binary_seen = False

    def read(sample: Sample, image: np.ndarray) -> np.ndarray:
        nonlocal binary_seen
        path = pred_dir / f"{sample.name}.png"
        if not path.is_file():
            raise PathosegError(f"no prediction for image {sample.name}", path)
        with warnings.catch_warnings(record=True) as caught:  # scored by its components, as documented
            warnings.simplefilter("always", BinaryMaskWarning)
            labels = read_mask(path)
        if not binary_seen and any(issubclass(w.category, BinaryMaskWarning) for w in caught):
            binary_seen = True
            warnings.warn(f"{pred_dir}: binary masks (e.g. {path.name}): glands are their connected components, so "
                          "touching glands cannot be told apart (the error anatomy counts them as merges)",
                          BinaryMaskWarning, stacklevel=2)
        return labels

    return read


def _thumbnail_png(picture: np.ndarray, width: int = 320) -> bytes:
    img = Image.fromarray(picture)
    img.thumbnail((width, width))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def gallery_html(results: Sequence[ImageResult]) -> str:
    ranked = sorted((r for r in results if r.overlap is not None), key=lambda r: r.iou)
    cells = [f'<div style="display:inline-block;width:240px;margin:4px;vertical-align:top">'
             f'{image_html(_thumbnail_png(r.overlap), f"{r.name} ({r.part}) IoU {r.iou:.3f}")}</div>'
             for r in ranked]
    legend = ('<p class="note">Ground truth <b style="color:#d00">red</b>, prediction '
              '<b style="color:#0a0">green</b>, overlap <b style="color:#aa0">yellow</b>; each predicted gland '
              'outlined in its own colour; worst IoU first.</p>')
    return legend + "".join(cells)


@dataclass
class EvaluationOutputs:
    metrics: dict[str, dict]
    metrics_json: Path
    per_image_csv: Path
    report: Path | None = None


def write_outputs(results: Sequence[ImageResult], out: Path, title: str,
                  history: Sequence[dict] | None = None, json_path: Path | None = None,
                  pictures: bool = True) -> EvaluationOutputs:
    out.mkdir(parents=True, exist_ok=True)
    metrics = summarize_parts(results)
    metrics_json = write_json(json_path or out / "metrics.json", metrics)
    per_image = out / "per_image.csv"
    with atomic_path(per_image) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0].row()))
        writer.writeheader()
        writer.writerows(r.row() for r in results)
    report_path = None
    if pictures and any(r.overlap is not None for r in results):
        ranked = sorted((r for r in results if r.overlap is not None), key=lambda r: r.iou)
        for r in ranked:
            figure = panel_figure(Panel(r.overlap, f"{r.name} — IoU {r.iou:.4f}"))
            save_figure(figure, out / "overlaps" / f"{r.name}.png", dpi=80)
        panels = [Panel(r.overlap, f"{r.name} IoU {r.iou:.3f}") for r in ranked[:16]]
        save_figure(gallery_figure(panels, title="Worst 16 by IoU (worst first)"), out / "gallery.png")
        report = Report(title)
        rows = [{"part": p, **{k: m[k] for k in METRIC_KEYS}, "images": m["n_images"]} for p, m in metrics.items()]
        report.add_table("Metrics", rows, "pooled = all pixels of the part together; mean = mean of per-image "
                         "scores. F1, object Dice and object Hausdorff (pixels) as in the GlaS challenge.")
        report.add_table("Error anatomy", [{"part": p, **m["errors"]} for p, m in metrics.items()],
                         "Glands matched as the simulated pathologist matches them: a merge is one predicted gland "
                         "over two or more true ones, a split one true gland in two or more predicted pieces, "
                         "stray = a matched gland whose outline strays beyond the tolerance; counts of events.")
        report.add_html("Worst images per error kind", worst_images_html(results))
        if history:
            report.add_image("Learning curve", figure_png_bytes(learning_curve_figure(history)))
        report.add_html("Overlap gallery", gallery_html(results))
        report.footer = ("GlaS data: Sirinukunwattana et al., Gland segmentation in colon histology images: "
                         "The GlaS challenge contest, Medical Image Analysis 35 (2017).")
        report_path = report.write(out / "report.html")
    return EvaluationOutputs(metrics, metrics_json, per_image, report_path)


def metrics_lines(metrics: dict[str, dict]) -> list[str]:
    head = f"{'part':<7}{'images':>7}" + "".join(f"{k:>17}" for k in METRIC_KEYS)
    lines = [head]
    for part, m in metrics.items():
        lines.append(f"{part:<7}{m['n_images']:>7}" + "".join(f"{m[k]:>17.4f}" for k in METRIC_KEYS))
    for part, m in metrics.items():
        e = m.get("errors") or {}
        if e.get("true"):
            lines.append(f"{part:<7} errors: {e['merged']} merged, {e['split']} split, {e['missed']} missed, "
                         f"{e['false']} false, {e['stray']} stray outlines (of {e['true']} true glands, "
                         f"{e['predicted']} predicted)")
    return lines


def worst_images_html(results: Sequence[ImageResult], per_kind: int = 3) -> str:
    """The images with the most errors of each kind, their overlap pictures side by side."""
    rows = []
    for kind in ERROR_KINDS:
        ranked = sorted((r for r in results if r.overlap is not None and getattr(r.errors, kind)),
                        key=lambda r: (-getattr(r.errors, kind), r.name))[:per_kind]
        if not ranked:
            continue
        cells = "".join(f'<div style="display:inline-block;width:240px;margin:4px;vertical-align:top">'
                        f'{image_html(_thumbnail_png(r.overlap), f"{r.name}: {getattr(r.errors, kind)} {kind}")}</div>'
                        for r in ranked)
        rows.append(f"<h3>{kind}</h3>{cells}")
    return "".join(rows) or '<p class="note">No errors of any kind.</p>'
