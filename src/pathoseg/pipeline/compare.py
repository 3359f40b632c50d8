"""``pathoseg compare``: backbones side by side under one protocol.

Each (model, seed) run trains in a child process of its own, so its peak memory is its own
and a finished run is never repeated: ``runs/<model>/seed<k>/result.json`` marks it done and
records the settings it was made with (:func:`run_settings`). A finished run made with other
settings stops the comparison with the first difference; ``fresh`` runs everything again.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pathoseg.data.images import read_label_png_or_none, write_label_png
from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.cost import gflops, latency_ms, peak_rss_mb
from pathoseg.engine.device import choose_device, describe_device
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.train import TrainConfig
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path, write_json, write_text
from pathoseg.metrics import pixel_counts
from pathoseg.models import count_parameters, get_preset
from pathoseg.pipeline.evaluation import evaluate_parts, headline_part, model_segmenter, summarize_parts
from pathoseg.pipeline.training import plan_data, run_training, training_settings
from pathoseg.runconfig import check_fingerprint, remove_results, stamp
from pathoseg.viz.figures import Panel, gallery_figure, save_figure
from pathoseg.viz.overlay import overlap_image
from pathoseg.viz.report import Report, image_html

PROTOCOLS = ("seed", "official")
COLUMNS = ("iou_pooled", "iou_mean", "dice_pooled", "dice_mean", "f1", "object_dice", "object_hausdorff")


SEED_PROTOCOL_EPOCHS = 15  # the original study's schedule


@dataclass
class CompareConfig:
    models: list[str]
    protocol: str = "official"  # seed: random 8:2 split per seed, 15 epochs (the original study)
    seeds: int = 1
    train: TrainConfig = field(default_factory=TrainConfig)
    gallery: int = 3  # test images shown side by side across models
    device: str | None = None

    @classmethod
    def of(cls, models: list[str], protocol: str = "official", epochs: int | None = None, **changes) -> CompareConfig:
        """The protocol's schedule unless ``epochs`` says otherwise: 15 epochs under ``seed`` (the
        original study), else the training default."""
        train = changes.pop("train", TrainConfig())
        if epochs or protocol == "seed":
            train = replace(train, epochs=epochs or SEED_PROTOCOL_EPOCHS)
        return cls(models, protocol, train=train, **changes)

    def train_config(self, model: str, seed: int) -> TrainConfig:
        return replace(self.train, model=replace(self.train.model, preset=model), seed=seed, progress=False)


def _split_kind(protocol: str) -> str:
    return "random" if protocol == "seed" else "official"


def gallery_names(test_names: list[str], n: int) -> list[str]:
    if not test_names:
        return []
    idx = np.linspace(0, len(test_names) - 1, min(n, len(test_names))).round().astype(int)
    return [test_names[i] for i in idx]


def run_settings(data_path: str | Path, cfg: CompareConfig, model: str, seed: int) -> dict:
    """What one (model, seed) result depends on: the protocol, that model's training settings
    (config and split, :func:`training_settings`) and the device type, since latency and peak
    memory are measured on it. The gallery size (pictures only), the other models and the
    number of seeds are left out."""
    plan = plan_data(data_path, _split_kind(cfg.protocol), seed=seed)
    return {"protocol": cfg.protocol, "device": choose_device(cfg.device).type,
            "training": training_settings(cfg.train_config(model, seed), plan.split)}


def run_one(data_path: str, cfg: CompareConfig, model: str, seed: int, out: str,
            settings: dict | None = None) -> None:
    """Train, evaluate and profile one (model, seed); write ``result.json`` (with ``settings``) last."""
    run_dir = Path(out)
    device = choose_device(cfg.device)
    plan = plan_data(data_path, _split_kind(cfg.protocol), seed=seed)
    tcfg = cfg.train_config(model, seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run_training(plan, tcfg, run_dir, cfg.device)
    train_s = result.state.elapsed
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
    net, ckpt = load_model(result.best, device)
    pcfg = PredictConfig(scale=ckpt.scale)
    segment = model_segmenter(net, pcfg, ckpt.instance_config(), device)
    shown = set(gallery_names(plan.split.test_names, cfg.gallery))

    def segment_and_keep(sample, image):
        labels = segment(sample, image)
        if sample.name in shown:
            write_label_png(run_dir / "gallery" / f"{sample.name}.png", labels)
        return labels

    metrics = summarize_parts(evaluate_parts(plan.data, plan.split, segment_and_keep, progress=False,
                                             keep_pictures=False))
    record = {
        "model": model, "seed": seed, "protocol": cfg.protocol, "device": describe_device(device),
        "params_m": count_parameters(net) / 1e6, "gflops": gflops(net), "latency_ms": latency_ms(net, pcfg, device),
        "train_s": train_s, "epochs_run": len(result.history), "peak_mem_mb": peak, "metrics": metrics,
        **stamp(settings if settings is not None else run_settings(data_path, cfg, model, seed)),
    }
    write_json(run_dir / "result.json", record)


def _spawn(target: Callable[..., None], *args) -> int | None:
    """Run ``target(*args)`` in a fresh process; its exit code."""
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join()
    return proc.exitcode


def _run_isolated(data_path: str, cfg: CompareConfig, model: str, seed: int, out: Path,
                  fresh: bool = False) -> dict:
    """The result of one (model, seed): reused when ``out`` holds one made with the same
    settings, else trained in a child process. ``fresh`` deletes ``out`` first."""
    done = out / "result.json"
    settings = run_settings(data_path, cfg, model, seed)
    if fresh:
        remove_results(out)
    if done.is_file():
        check_fingerprint(out, settings, f"the finished {model} seed {seed} run", name="result.json")
    else:
        exitcode = _spawn(run_one, data_path, cfg, model, seed, str(out), settings)
        if exitcode != 0 or not done.is_file():
            raise PathosegError(f"run for {model} seed {seed} failed (exit code {exitcode}); see above", out)
    return json.loads(done.read_text())


def aggregate(records: list[dict]) -> list[dict]:
    """One row per model: costs and test metrics as mean (and std over seeds when > 1)."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in records):
        rs = [r for r in records if r["model"] == model]
        row: dict = {"model": model}
        for key in ("params_m", "gflops", "latency_ms", "train_s", "peak_mem_mb"):
            row[key] = float(np.mean([r[key] for r in rs]))
        for part in rs[0]["metrics"]:
            for key in COLUMNS:
                values = [r["metrics"][part][key] for r in rs]
                prefix = "" if part == headline_part(rs[0]["metrics"]) else f"{part}_"
                row[prefix + key] = float(np.mean(values))
                if len(rs) > 1:
                    row[prefix + key + "_std"] = float(np.std(values, ddof=1))
        row["seeds"] = len(rs)
        rows.append(row)
    return rows


def weights_used(record: dict) -> str:
    """What a run's encoder started from: ImageNet weights where they ship offline, else random."""
    asked = record.get("settings", {}).get("training", {}).get("model", {}).get("weights", "default")
    offline = get_preset(record["model"]).offline_weights is not None
    return "imagenet (offline)" if offline and asked in ("default", "imagenet") else "random init"


def results_json(records: list[dict], command: str) -> dict:
    """Per model, each seed's pooled test IoU, object F1 and training minutes (the schema of
    docs/results/compare_seed.json)."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in records):
        rs = sorted((r for r in records if r["model"] == model), key=lambda r: r["seed"])
        heads = [r["metrics"][headline_part(r["metrics"])] for r in rs]
        rows.append({"model": model, "params_m": float(rs[0]["params_m"]), "weights": weights_used(rs[0]),
                     "iou_pooled": [float(h["iou_pooled"]) for h in heads],
                     "object_f1": [float(h["f1"]) for h in heads],
                     "train_minutes": [float(r["train_s"]) / 60 for r in rs]})
    device = ", ".join(dict.fromkeys(str(r.get("device", "?")) for r in records))
    return {"command": command, "device": device, "rows": rows}


def markdown_table(rows: list[dict]) -> str:
    cols = ["model", "params_m", "gflops", "latency_ms", "train_s", "peak_mem_mb", "iou_pooled", "iou_mean",
            "dice_pooled", "f1", "object_dice", "object_hausdorff"]
    def cell(row, c):
        v = row.get(c, "")
        if isinstance(v, float):
            std = row.get(c + "_std")
            return f"{v:.4f} ± {std:.4f}" if std is not None else (f"{v:.4f}" if v < 10 else f"{v:.1f}")
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r, c) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sizes = np.array([r["params_m"] for r in rows])
    ax.scatter([r["latency_ms"] for r in rows], [r["iou_pooled"] for r in rows], s=40 + 25 * sizes, alpha=0.6,
               color="tab:purple", edgecolor="k")
    for r in rows:
        ax.annotate(f"{r['model']} ({r['params_m']:.1f}M)", (r["latency_ms"], r["iou_pooled"]), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("latency per 775x522 image (ms)")
    ax.set_ylabel("test IoU (pooled)")
    ax.set_title("Quality against cost (bubble size = parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _side_by_side(data_path: str, cfg: CompareConfig, out: Path, models: list[str]):
    """Rows = the same test images, columns = models (seed 0 runs)."""
    plan = plan_data(data_path, _split_kind(cfg.protocol), seed=0)
    panels = []
    for name in gallery_names(plan.split.test_names, cfg.gallery):
        image, gt = plan.data[name].load()
        for model in models:
            pred = read_label_png_or_none(out / "runs" / model / "seed0" / "gallery" / f"{name}.png")
            if pred is None:
                continue
            iou = pixel_counts(gt, pred).iou
            panels.append(Panel(overlap_image(image, gt, pred), f"{model}: {name} IoU {iou:.3f}"))
    return gallery_figure(panels, columns=len(models), title="Same test images across models") if panels else None


def run_compare(data_path: str | Path, cfg: CompareConfig, out: Path, log=print, fresh: bool = False,
                json_path: Path | None = None, command: str = "") -> list[dict]:
    """Train (or reuse) every (model, seed) run, then the tables and report (``json_path``: also
    each seed's numbers there, :func:`results_json`). ``fresh``: train every requested run
    again, deleting its earlier results."""
    if cfg.protocol not in PROTOCOLS:
        raise PathosegError(f"unknown protocol {cfg.protocol!r}; choose from {', '.join(PROTOCOLS)}")
    for m in cfg.models:
        get_preset(m)  # fail fast on a typo, before hours of training
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for model in cfg.models:
        for seed in range(cfg.seeds):
            run_dir = out / "runs" / model / f"seed{seed}"
            status = "done before" if (run_dir / "result.json").is_file() and not fresh else "training"
            log(f"[{model} seed {seed}] {status}")
            records.append(_run_isolated(str(data_path), cfg, model, seed, run_dir, fresh))
    rows = aggregate(records)
    if json_path is not None:
        write_json(json_path, results_json(records, command))
    with atomic_path(out / "compare.csv") as tmp, tmp.open("w", newline="") as f:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    write_text(out / "compare.md", table)
    report = Report(f"pathoseg model comparison ({cfg.protocol} protocol, {cfg.seeds} seed(s))")
    report.add_table("Models", [{k: v for k, v in r.items() if not k.endswith("_std")} for r in rows],
                     "IoU/Dice/F1/object metrics on the test set (both GlaS parts for the official protocol); "
                     "latency per 775x522 image on the device used; peak_mem_mb: peak process memory on CPU, "
                     "peak allocated GPU memory on CUDA.")
    plot_png = save_figure(_plot(rows), out / "iou_vs_latency.png")
    report.add_image("IoU against latency", plot_png.read_bytes())
    side = _side_by_side(str(data_path), cfg, out, list(cfg.models))
    if side is not None:
        report.add_html("Side by side", image_html(save_figure(side, out / "side_by_side.png").read_bytes()))
    report.add_html("Configuration", f"<pre>{json.dumps(asdict(cfg), indent=2, default=str)}</pre>")
    report.write(out / "report.html")
    return rows
