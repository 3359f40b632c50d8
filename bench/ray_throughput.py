"""``pathoseg predict --engine ray`` against the single-process path, in one run: throughput
with 1 and 2 Ray workers, slides whole on one worker and split into windows over all of them,
and with ``--engine local`` (torch's default threads, and 1 thread), and whether every output
file is the same.

    python bench/ray_throughput.py [--slides 2 --side 2048 --patches 4] [--images 8 --data GLAS]
                                   [--workers 1,2] [--split no,yes] [--cpus-per-worker 1]
                                   [--local-threads 0,1] [--tile 1024]
                                   [--checkpoint runs/lite0/best.pt] [--out runs/ray-bench]

Inputs: ``--slides`` synthetic pyramidal TIFFs at 0.62 µm/px (``bench/slide_throughput.py``'s:
glass with a block of ``--patches`` 512x512 patches of synthetic glands; each slide gets other
glands) and ``--images`` plain images (the first GlaS testA images when GlaS is found, else
synthetic 512x512 ones). Throughput is megapixels per second: the images' pixels plus the
slides' tissue (at the model's resolution), over the wall time of the prediction call
(``predict_files`` + ``predict_slides`` in this process, or ``predict_on_ray``, which includes
starting the actors and building the model in each). Starting the local Ray itself is timed
apart: a cluster is started once for many commands. Without ``--checkpoint`` an untrained
DeepLabV3+ / EfficientNet-Lite0 is used: the same network cost as a trained one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

from slide_throughput import make_slide, untrained_checkpoint


def plain_images(folder: Path, n: int, data: str | None) -> list[Path]:
    from pathoseg.data import load_dataset
    from pathoseg.data.images import write_rgb_png
    from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
    from pathoseg.pipeline.training import find_dataset

    root = find_dataset(data)
    if root is not None:
        return [s.image_path for s in load_dataset(root) if s.part == "testA"][:n]
    return [write_rgb_png(folder / f"synth_{k}.png", synthetic_sample(500 + k, SyntheticConfig(size=(512, 512)))[0])
            for k in range(n)]


def output_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=2, help="synthetic slides")
    ap.add_argument("--side", type=int, default=2048, help="slide side in level-0 pixels")
    ap.add_argument("--patches", type=int, default=4, help="512x512 tissue patches per slide")
    ap.add_argument("--images", type=int, default=8, help="plain images (GlaS testA, else synthetic 512x512)")
    ap.add_argument("--data", help="GlaS (default ../shared/data/glas)")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    ap.add_argument("--split", default="no",
                    help="slides whole on one worker (no) and/or split into windows over all workers (yes)")
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--local-threads", default="0,1", help="torch threads of the single-process runs (0: default)")
    ap.add_argument("--tile", type=int, default=1024, help="slide window side")
    ap.add_argument("--checkpoint", help="a trained model (default: an untrained one)")
    ap.add_argument("--out", default="runs/ray-bench")
    args = ap.parse_args()

    import torch

    from pathoseg.data.images import read_image
    from pathoseg.engine.checkpoint import load_model
    from pathoseg.engine.predict import PredictConfig
    from pathoseg.pipeline.prediction import file_digest, open_slides, predict_files, predict_slides, slide_config
    from pathoseg.pipeline.ray_engine import PredictJob, RayConfig, predict_on_ray, start_ray, stop_ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worker_counts = [int(w) for w in args.workers.split(",")]
    ckpt_path = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(out / "untrained.pt")
    slides = [make_slide(out / f"slide_{k}.tif", args.side, args.patches, seed=100 * k) for k in range(args.slides)]
    images = plain_images(out / "images", args.images, args.data)
    model, ckpt = load_model(ckpt_path)
    model_mpp = ckpt.mpp or 0.62
    icfg = ckpt.instance_config()
    pcfg = PredictConfig(scale=ckpt.scale)
    slide_cfg = slide_config(args.tile, False)
    identity = {"checkpoint": file_digest(ckpt_path)}
    image_mpx = sum(read_image(p).shape[0] * read_image(p).shape[1] for p in images) / 1e6

    def fresh(name: str) -> Path:
        import shutil

        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)  # a leftover slide would resume instead of running
        return folder

    rows = []
    reference: dict[str, bytes] | None = None
    default_threads = torch.get_num_threads()
    for threads in [int(t) or default_threads for t in args.local_threads.split(",")]:
        torch.set_num_threads(threads)
        local_out = fresh(f"local_{threads}")
        start = time.perf_counter()
        predict_files(model, images, local_out, pcfg, icfg, torch.device("cpu"), progress=False)
        opened = open_slides(slides, None, None)
        runs = predict_slides(model, opened, local_out / "slides", model_mpp, ckpt.scale, icfg, torch.device("cpu"),
                              slide_cfg, identity, progress=False)
        seconds = time.perf_counter() - start
        tissue_mpx = sum(r.tissue_mpx for r in runs)
        reference = reference or output_files(local_out)
        rows.append((f"local, {threads} torch thread{'s' * (threads > 1)}", seconds,
                     output_files(local_out) == reference))
    torch.set_num_threads(default_threads)
    regions = []
    for slide, region in open_slides(slides, None, None):
        regions.append((slide.path, region))
        slide.close()

    start = time.perf_counter()
    assert start_ray(RayConfig(workers=max(worker_counts), cpus_per_worker=args.cpus_per_worker))
    ray_start_s = time.perf_counter() - start
    try:
        for workers, split in itertools.product(worker_counts, args.split.split(",")):
            ray_out = fresh(f"ray_{workers}_{split}")
            job = PredictJob(ray_out, "cpu", pcfg, icfg, icfg, slide_cfg, None, model_mpp, ckpt.scale, identity)
            cfg = RayConfig(workers=workers, cpus_per_worker=args.cpus_per_worker, split_slides=split == "yes")
            start = time.perf_counter()
            predict_on_ray(ckpt, images, regions, job, cfg, progress=False)
            seconds = time.perf_counter() - start
            how = "slides split into windows" if split == "yes" else "slides whole"
            rows.append((f"ray, {workers} worker{'s' * (workers > 1)} x {args.cpus_per_worker} CPU, {how}", seconds,
                         output_files(ray_out) == reference))
    finally:
        stop_ray()

    mpx = image_mpx + tissue_mpx
    print(f"\n{len(images)} images ({image_mpx:.2f} MP) and {len(slides)} slides of {args.side}x{args.side} "
          f"({tissue_mpx:.2f} MP of tissue), tile {args.tile}, {os.cpu_count()} CPUs; local Ray started in "
          f"{ray_start_s:.1f} s (not counted below)\n")
    print("| engine | seconds | MP/s | vs local | outputs identical to local |")
    print("|---|---|---|---|---|")
    local_s = rows[0][1]
    for name, seconds, same in rows:
        same_text = "yes" if same else "NO"
        print(f"| {name} | {seconds:.1f} | {mpx / seconds:.3f} | {local_s / seconds:.2f}x | {same_text} |")
    if not all(same for _, _, same in rows):
        sys.exit("outputs differ from the single-process path")


if __name__ == "__main__":
    main()
