"""Instance-aware DeepLabV3+ on GlaS (official split), seed by seed, resumable.

    python bench/glas_instances.py --data ../shared/data/glas --crop 384 --epochs 60 --boundary-weight 5 \\
        --variants --headline flip+scales --seeds 0,1,2 --out runs/testb-crop384-bw5 \\
        --json docs/results/glas_default.json      # the glas recipe, pathoseg train's default
    python bench/glas_instances.py --seeds 0,1,2 --out runs/bench-instances \\
        --json docs/results/glas_quick.json        # the quick recipe (the flags' defaults)
    python bench/glas_instances.py --head semantic --epochs 40 --seeds 0 --out runs/bench-semantic-e40

Each seed trains in ``OUT/seed<k>/`` (``last.pt`` lets a stopped seed continue) and is then
evaluated on testA, testB and both with the model's own instance decoder and, for
comparison, with connected components of the same gland map. ``seed<k>/result.json`` is
written last: a finished seed is never redone, and a seed whose settings differ from the
command's stops with an error naming the setting (``--fresh`` starts over).

``--select f1`` makes ``best.pt`` the epoch best by validation object F1 (default: pooled
IoU); ``--variants`` also evaluates flip TTA, flip + multi-scale TTA (``--tta-scales``) and
the checkpoint the other selection rule picked (alone and with flip + multi-scale TTA);
``--headline`` picks the evaluation the summary reports. Every evaluation adds the error
anatomy (merged, split, missed, false glands and stray outlines) per test part.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from pathoseg.cli.options import non_negative, tta_scales
from pathoseg.data.cache import load_scaled
from pathoseg.engine.checkpoint import load_checkpoint, load_model
from pathoseg.engine.device import choose_device, describe_device
from pathoseg.engine.instances import learned_min_size
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.settings import SELECTIONS
from pathoseg.engine.train import TrainConfig
from pathoseg.models import DEFAULT_HEAD, ModelConfig
from pathoseg.pipeline.evaluation import evaluate_parts, metrics_lines, model_segmenter, summarize_parts
from pathoseg.pipeline.training import find_dataset, plan_data, run_training

KEYS = ("f1", "object_dice", "object_hausdorff", "iou_pooled")
PARTS = ("testA", "testB", "test")
# Published results on the same test set (F1, object Dice, object Hausdorff), testA | testB.
REFERENCES = {
    "DCAN (GlaS 2015 winner)": {"testA": (0.912, 0.897, 45.4), "testB": (0.716, 0.781, 160.3)},
    "MILD-Net (2019)": {"testA": (0.914, 0.913, 41.5), "testB": (0.844, 0.836, 105.9)},
    "SDT (MICCAI 2023)": {"testA": (0.931, 0.919, 32.3), "testB": (0.866, 0.851, 82.4)},
}


def run_seed(args: argparse.Namespace, cfg: TrainConfig, out: Path, data: Path) -> dict:
    done = out / "result.json"
    wanted = cfg.to_dict() | {"progress": None}
    if done.is_file():
        result = json.loads(done.read_text())
        stored = result["config"] | {"progress": None}
        defaults = TrainConfig().to_dict()  # settings added since a seed ran had their defaults then
        differing = [k for k in wanted if stored.get(k, defaults.get(k)) != wanted[k]]
        if differing:
            raise SystemExit(f"{done}: made with another {differing[0]} ({stored.get(differing[0])!r}, "
                             f"now {wanted[differing[0]]!r}); pass --fresh to start over")
        if not args.reevaluate:
            return result
    plan = plan_data(data, "official", seed=cfg.seed, val_fraction=args.val_fraction)
    if done.is_file():  # --reevaluate: the same checkpoint through today's decoder
        last = load_checkpoint(out / "last.pt")
        elapsed, epochs = float(last.metrics["elapsed"]), last.epoch
    else:
        trained = run_training(plan, cfg, out, args.device, resume=(out / "last.pt").is_file())
        elapsed, epochs = trained.state.elapsed, len(trained.history)
    device = choose_device(args.device)
    model, ckpt = load_model(out / "best.pt", device)
    if not ckpt.instances:  # written before checkpoints learned the decoder's gland size floor
        train = load_scaled(plan.data.subset(plan.split.train), cfg.scale, progress=False)
        ckpt.instances = {"min_size": learned_min_size((p.target for p in train), cfg.scale)}
    result: dict = {"config": cfg.to_dict(), "train_minutes": elapsed / 60,
                    "instance_config": asdict(ckpt.instance_config()),
                    "epochs": epochs, "best_epoch": ckpt.epoch, "decoders": {}}
    base = PredictConfig(scale=ckpt.scale, tta=args.tta)
    variants = {"model": (model, base, ckpt.instance_config()),
                "components": (model, base, ckpt.instance_config(method="components"))}
    if args.variants:
        variants |= {"flip": (model, replace(base, tta=True), ckpt.instance_config()),
                     "flip+scales": (model, replace(base, tta=True, tta_scales=args.tta_scales),
                                     ckpt.instance_config())}
        other = next(m for m in SELECTIONS if m != cfg.select)
        if (out / f"best-{other}.pt").is_file():
            alt, alt_ckpt = load_model(out / f"best-{other}.pt", device)
            alt_ckpt.instances = ckpt.instances
            variants[f"select-{other}"] = (alt, base, alt_ckpt.instance_config())
            variants[f"select-{other}+flip+scales"] = (alt, replace(base, tta=True, tta_scales=args.tta_scales),
                                                       alt_ckpt.instance_config())
            result[f"best_epoch_{other}"] = alt_ckpt.epoch
    for name, (net, pcfg, icfg) in variants.items():
        start = time.perf_counter()
        segment = model_segmenter(net, pcfg, icfg, device)
        metrics = summarize_parts(evaluate_parts(plan.data, plan.split, segment, progress=False,
                                                 keep_pictures=False))
        result["decoders"][name] = {"eval_s": time.perf_counter() - start, **metrics}
        print(f"seed {cfg.seed}, {name}:\n" + "\n".join(metrics_lines(metrics)), flush=True)
    done.write_text(json.dumps(result, indent=2))
    return result


def summary_json(results: list[dict], command: str, headline: str = "model") -> dict:
    """Each seed's numbers of the ``headline`` evaluation (``model``: best.pt, no TTA; or a
    variant) and, for comparison, of connected components of best.pt's gland map."""
    missing = [r["config"]["seed"] for r in results if headline not in r["decoders"]]
    if missing:
        raise SystemExit(f"--headline {headline}: not evaluated for seed {missing[0]} (add --variants "
                         "--reevaluate, or choose from: " + ", ".join(results[0]["decoders"]) + ")")
    out: dict = {"command": command, "device": describe_device(), "headline": headline,
                 "train_minutes": [r["train_minutes"] for r in results]}
    for part in PARTS:
        out[part] = {k: [r["decoders"][headline][part][k] for r in results] for k in KEYS}
    out["components_decoder"] = {part: {k: [r["decoders"]["components"][part][k] for r in results] for k in KEYS}
                                 for part in PARTS}
    return out


def table(summary: dict) -> str:
    def cell(values: list[float], digits: int) -> str:
        return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if len(values) > 1 else \
            f"{values[0]:.{digits}f}"

    lines = ["| method | testA F1 | testA obj. Dice | testA obj. Hausdorff | testB F1 | testB obj. Dice | "
             "testB obj. Hausdorff | pooled IoU (both) |", "|---" * 8 + "|"]
    headline = summary.get("headline", "model")
    for label, parts in ((f"pathoseg ({'instance decoder' if headline == 'model' else headline})",
                          {p: summary[p] for p in PARTS}),
                         ("same models, connected components", summary["components_decoder"])):
        cells = [cell(parts[p][k], 1 if k == "object_hausdorff" else 3)
                 for p in ("testA", "testB") for k in KEYS[:3]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cell(parts['test']['iou_pooled'], 4)} |")
    for name, ref in REFERENCES.items():
        cells = [f"{v}" for p in ("testA", "testB") for v in ref[p]]
        lines.append(f"| {name} | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def main() -> None:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--out", default="runs/bench-instances")
    ap.add_argument("--json", help="write the summary here (docs/results/glas_default.json)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--model", default=d.model.preset)
    ap.add_argument("--head", default=DEFAULT_HEAD)
    ap.add_argument("--output-stride", type=int, default=d.model.output_stride)
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--scale", type=float, default=d.scale)
    ap.add_argument("--crop", type=int, default=d.crop)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--select", default=d.select, choices=SELECTIONS)
    ap.add_argument("--boundary-weight", type=non_negative, default=d.boundary_weight,
                    help="loss weight near gland outlines (TrainConfig.boundary_weight)")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--tta", action="store_true", help="flip test-time augmentation for every evaluation")
    ap.add_argument("--variants", action="store_true",
                    help="also evaluate flip TTA, flip + multi-scale TTA and the checkpoint the other "
                         "selection rule picked (best-<other>.pt)")
    ap.add_argument("--tta-scales", type=tta_scales, default=(0.75, 1.25), help="--variants: the extra input scales")
    ap.add_argument("--headline", default="model",
                    help="the evaluation whose numbers the summary and --json hold: model (best.pt, no TTA) "
                         "or a --variants name, e.g. flip+scales or select-iou+flip+scales")
    ap.add_argument("--device")
    ap.add_argument("--fresh", action="store_true", help="delete earlier results in OUT first")
    ap.add_argument("--reevaluate", action="store_true",
                    help="evaluate finished seeds again with the current decoder (no training)")
    args = ap.parse_args()

    data = find_dataset(args.data)
    if data is None:
        raise SystemExit("GlaS not found: pass --data")
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    model = ModelConfig(args.model, args.output_stride, head=args.head)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = replace(d, model=model, epochs=args.epochs, scale=args.scale, crop=args.crop, lr=args.lr,
                      batch_size=args.batch_size, select=args.select, seed=seed,
                      boundary_weight=args.boundary_weight, progress=sys.stderr.isatty())
        results.append(run_seed(args, cfg, out / f"seed{seed}", data))
    command = "python bench/glas_instances.py " + shlex.join(sys.argv[1:])
    summary = summary_json(results, command, args.headline)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    print(f"training minutes per seed: {', '.join(f'{m:.1f}' for m in summary['train_minutes'])} "
          f"on {summary['device']}")


if __name__ == "__main__":
    main()
