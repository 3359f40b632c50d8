"""The human-in-the-loop study: rounds of predict -> label (by strategy) -> retrain -> test.

Layout of ``out`` (what makes it resumable — ``record.json`` is written last, so a round
without one is redone, and a round with one is never redone):

    seed<k>/round0/{model.pt, settings.json, record.json}        shared by all strategies
    seed<k>/<strategy>/round<r>/{labels/*.png, model.pt, settings.json, record.json}

``settings.json`` records what the round's results depend on (:meth:`StudyRunner.round_settings`);
a finished round made with other settings stops the study with the first difference, and
``fresh`` starts the study's seeds over.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pathoseg.data import SampleSet
from pathoseg.data.cache import ScaledPair, load_scaled
from pathoseg.data.images import read_target, write_label_png
from pathoseg.data.splits import Split, stratified_pick
from pathoseg.data.targets import gland_pixels
from pathoseg.engine.checkpoint import Checkpoint, load_model
from pathoseg.engine.device import choose_device
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig, predict_probs
from pathoseg.engine.settings import WarmRound
from pathoseg.engine.train import TrainConfig, fit
from pathoseg.hitl.annotator import DEFAULT_TOLERANCE_UM, UM_PER_PX_GLAS, CostModel, Effort, SimulatedAnnotator
from pathoseg.hitl.selection import mean_entropy, rank
from pathoseg.hitl.strategies import Strategy, make_label
from pathoseg.io import write_json
from pathoseg.metrics import pixel_counts
from pathoseg.models import GlandSegmenter, build_model, freeze_encoder_stages
from pathoseg.pipeline.evaluation import evaluate_parts, model_segmenter, summarize_parts
from pathoseg.pipeline.training import plan_data, split_settings
from pathoseg.runconfig import check_fingerprint, remove_results, write_fingerprint


@dataclass
class StudyConfig:
    strategies: list[Strategy]
    rounds: int = 4
    seeds: int = 1
    initial_fraction: float = 0.2  # of the training images, labelled by hand before round 1
    selection: str = "uncertainty"
    retrain: str = "warm"  # warm: continue from the previous round's model; scratch: from ImageNet
    train: TrainConfig = field(default_factory=TrainConfig)
    initial_steps: int = 200  # optimiser steps for the round-0 model
    warm: WarmRound = field(default_factory=WarmRound)  # how later rounds retrain (retrain="warm")
    tolerance_um: float = DEFAULT_TOLERANCE_UM  # a gland outline this close to the truth is accepted as drawn
    um_per_px: float = UM_PER_PX_GLAS  # native pixel size of the data
    confident_only: bool = False  # pseudo-labels ignore pixels with 0.1 < p < 0.9
    cost: CostModel = field(default_factory=CostModel)
    test_limit: int | None = None  # evaluate on at most this many test images (quick runs)
    device: str | None = None


@dataclass
class Pool:
    """Everything a seed's study needs about its images, held once in memory."""

    split: Split
    pairs: dict[str, ScaledPair]  # training images with their ground-truth targets
    initial: list[str]
    pool: list[str]


def steps_to_epochs(steps: int, batch: int, n_images: int) -> int:
    return max(1, math.ceil(steps * batch / max(1, n_images)))


def _subset_test(split: Split, limit: int | None) -> Split:
    if not limit or len(split.test_names) <= limit:
        return split
    names = split.test_names
    keep = set(names[i] for i in np.linspace(0, len(names) - 1, limit).round().astype(int))
    return replace(split, test={p: [n for n in v if n in keep] for p, v in split.test.items()})


def make_pool(data: SampleSet, split: Split, cfg: StudyConfig, seed: int) -> Pool:
    train = split.train + split.val
    pairs = {p.name: p for p in load_scaled(data.subset(train), cfg.train.scale, progress=False)}
    rng = np.random.default_rng(seed)
    initial = sorted(stratified_pick(data.subset(train), cfg.initial_fraction, rng))
    pool = [n for n in train if n not in initial]
    return Pool(split, pairs, initial, pool)


# Training settings a round does not take from the study's TrainConfig (it sets them itself).
_ROUND_SETS = ("epochs", "seed", "budget_minutes", "progress")


class StudyRunner:
    def __init__(self, data_path: str | Path, cfg: StudyConfig, out: Path, fresh: bool = False):
        self.cfg = cfg
        self.out = out
        self.fresh = fresh
        self.device = choose_device(cfg.device)
        self.plan = plan_data(data_path, "official", seed=0, val_fraction=0)
        self.annotator = SimulatedAnnotator(tolerance_um=cfg.tolerance_um, cost=cfg.cost, scale=cfg.train.scale,
                                            um_per_px=cfg.um_per_px)

    # -- training and testing -------------------------------------------------------------
    def _train(self, model: GlandSegmenter, labels: dict[str, np.ndarray], pool: Pool, steps: int, lr: float,
               seed: int, freeze_stages: int = 0) -> float:
        freeze_encoder_stages(model, freeze_stages)
        pairs = [ScaledPair(n, pool.pairs[n].image, labels[n]) for n in sorted(labels)]
        epochs = steps_to_epochs(steps, self.cfg.train.batch_size, len(pairs))
        tcfg = replace(self.cfg.train, epochs=epochs, lr=lr, seed=seed, progress=False, budget_minutes=None)
        start = time.perf_counter()
        fit(model, pairs, [], tcfg, self.device)
        for p in model.parameters():  # the saved model and the next round start unfrozen
            p.requires_grad_(True)
        return time.perf_counter() - start

    def _test(self, model: GlandSegmenter, split: Split) -> dict:
        segment = model_segmenter(model, PredictConfig(scale=self.cfg.train.scale), InstanceConfig(), self.device)
        results = evaluate_parts(self.plan.data, split, segment, progress=False, keep_pictures=False)
        return summarize_parts(results)

    def _save_model(self, model: GlandSegmenter, path: Path) -> None:
        Checkpoint.of(model, self.cfg.train.scale, train_config=self.cfg.train.to_dict()).save(path)

    def _load_model(self, path: Path) -> GlandSegmenter:
        model, _ = load_model(path, self.device)
        return model

    # -- resuming -------------------------------------------------------------------------
    def round_settings(self, strategy: Strategy | None = None) -> dict:
        """What a round's record depends on. Round 0 (``strategy`` None): the data split, the
        training settings rounds use, the initial labels and steps, the annotator and the test
        subset. Later rounds add the strategy and the round plan (number of rounds, selection,
        retraining). Left out: the device, how many seeds and which other strategies run (the
        seed is in the folder's name)."""
        c = self.cfg
        train = {k: v for k, v in c.train.to_dict().items() if k not in _ROUND_SETS}
        settings = {"split": split_settings(self.plan.split), "train": train,
                    "initial_fraction": c.initial_fraction, "initial_steps": c.initial_steps,
                    "annotator": {"tolerance_um": c.tolerance_um, "um_per_px": c.um_per_px, "cost": asdict(c.cost)},
                    "test_limit": c.test_limit}
        if strategy is not None:
            settings = {"strategy": asdict(strategy), "rounds": c.rounds, "selection": c.selection,
                        "retrain": c.retrain, "round_steps": c.warm.steps, "round_lr_scale": c.warm.lr_scale,
                        "freeze_stages": c.warm.freeze_stages, "confident_only": c.confident_only,
                        **settings}
        return settings

    def _finished(self, rdir: Path, strategy: Strategy | None, what: str) -> bool:
        """Whether ``rdir`` holds a finished round; stops if it was made with other settings."""
        if not (rdir / "record.json").is_file():
            return False
        check_fingerprint(rdir, self.round_settings(strategy), what)
        return True

    def start_over(self) -> None:
        """``fresh``: delete the rounds of the seeds this study runs (every strategy's, since
        they all build on the seed's round 0)."""
        for seed in range(self.cfg.seeds):
            remove_results(self.out / f"seed{seed}")

    # -- rounds ---------------------------------------------------------------------------
    def round0(self, pool: Pool, seed: int, test_split: Split) -> tuple[GlandSegmenter, dict]:
        rdir = self.out / f"seed{seed}" / "round0"
        if self._finished(rdir, None, f"round 0 of seed {seed}"):
            return self._load_model(rdir / "model.pt"), json.loads((rdir / "record.json").read_text())
        torch.manual_seed(seed)
        model = build_model(self.cfg.train.model)
        labels = {n: pool.pairs[n].target for n in pool.initial}
        train_s = self._train(model, labels, pool, self.cfg.initial_steps, self.cfg.train.lr, seed * 1000)
        self._save_model(model, rdir / "model.pt")
        effort = sum((self.annotator.draw_from_scratch(pool.pairs[n].target) for n in pool.initial), Effort())
        record = {"seed": seed, "round": 0, "strategy": "initial", "test": self._test(model, test_split),
                  "label_iou": 1.0, "effort": asdict(effort), "train_s": train_s,
                  "selected": list(pool.initial), "reviewed": list(pool.initial)}
        write_fingerprint(rdir, self.round_settings())
        write_json(rdir / "record.json", record)
        return model, record

    def _round_rng(self, seed: int, strategy: Strategy, r: int) -> np.random.Generator:
        return np.random.default_rng([seed, r, zlib.crc32(strategy.name.encode())])

    def run_round(self, model: GlandSegmenter, labels: dict[str, np.ndarray], pool: Pool, strategy: Strategy,
                  seed: int, r: int, test_split: Split) -> tuple[GlandSegmenter, dict]:
        rdir = self.out / f"seed{seed}" / strategy.name / f"round{r}"
        remaining = [n for n in pool.pool if n not in labels]
        size = math.ceil(len(pool.pool) / self.cfg.rounds) if r < self.cfg.rounds else len(remaining)
        rng = self._round_rng(seed, strategy, r)
        need_probs = not strategy.oracle or self.cfg.selection == "uncertainty"
        start = time.perf_counter()
        probs = {n: predict_probs(model, pool.pairs[n].image, PredictConfig(scale=1.0), self.device, native=False)
                 for n in remaining} if need_probs else {}
        predict_s = time.perf_counter() - start
        uncertainty = {n: mean_entropy(p) for n, p in probs.items()}
        batch = rank(remaining, self.cfg.selection, rng, uncertainty or None)[:size]
        n_review = math.ceil(strategy.review_fraction * len(batch)) if strategy.review_fraction > 0 else 0
        reviewed = set(rank(batch, self.cfg.selection, rng, uncertainty or None)[:n_review])
        effort = Effort()
        for name in batch:
            target, cost = make_label(strategy, name in reviewed, probs.get(name), pool.pairs[name].target,
                                      self.annotator, self.cfg.confident_only)
            labels[name] = target
            effort = effort + cost
            write_label_png(rdir / "labels" / f"{name}.png", target)
        if self.cfg.retrain == "scratch":
            torch.manual_seed(seed * 1000 + r)
            model = build_model(self.cfg.train.model)
            lr, steps, freeze = self.cfg.train.lr, self.cfg.initial_steps, 0
        else:
            warm = self.cfg.warm
            lr, steps, freeze = self.cfg.train.lr * warm.lr_scale, warm.steps, warm.freeze_stages
        train_s = self._train(model, labels, pool, steps, lr, seed * 1000 + r, freeze)
        self._save_model(model, rdir / "model.pt")
        start = time.perf_counter()
        test = self._test(model, test_split)
        test_s = time.perf_counter() - start
        record = {"seed": seed, "round": r, "strategy": strategy.name, "test": test, "test_s": test_s,
                  "label_iou": label_quality(labels, pool), "effort": asdict(effort), "train_s": train_s,
                  "predict_s": predict_s, "selected": batch, "reviewed": sorted(reviewed)}
        write_fingerprint(rdir, self.round_settings(strategy))
        write_json(rdir / "record.json", record)
        return model, record

    def resume_round(self, labels: dict[str, np.ndarray], seed: int, strategy: Strategy, r: int
                     ) -> tuple[GlandSegmenter, dict] | None:
        rdir = self.out / f"seed{seed}" / strategy.name / f"round{r}"
        if not self._finished(rdir, strategy, f"round {r} of {strategy.name}, seed {seed},"):
            return None
        record = json.loads((rdir / "record.json").read_text())
        for name in record["selected"]:
            labels[name] = read_target(rdir / "labels" / f"{name}.png")
        return self._load_model(rdir / "model.pt"), record

    def run(self) -> list[dict]:
        if self.fresh:
            self.start_over()
        records = []
        total = self.cfg.seeds * (1 + len(self.cfg.strategies) * self.cfg.rounds)
        bar = tqdm(total=total, desc="HITL study", unit="round", dynamic_ncols=True)
        for seed in range(self.cfg.seeds):
            split = self.plan.split
            test_split = _subset_test(split, self.cfg.test_limit)
            pool = make_pool(self.plan.data, split, self.cfg, seed)
            model0, rec0 = self.round0(pool, seed, test_split)
            records.append(rec0)
            bar.update(1)
            for strategy in self.cfg.strategies:
                model = model0
                labels = {n: pool.pairs[n].target for n in pool.initial}
                for r in range(1, self.cfg.rounds + 1):
                    bar.set_postfix(seed=seed, strategy=strategy.name, round=r)
                    resumed = self.resume_round(labels, seed, strategy, r)
                    if resumed is None:
                        if model is model0:  # training is in place: strategies must not share it
                            model = Checkpoint.of(model, self.cfg.train.scale).build(self.device)
                        model, rec = self.run_round(model, labels, pool, strategy, seed, r, test_split)
                    else:
                        model, rec = resumed
                    records.append(rec)
                    bar.update(1)
        bar.close()
        return records


def label_quality(labels: dict[str, np.ndarray], pool: Pool) -> float:
    """Pooled IoU of the training labels against ground truth (IGNORE counts as background)."""
    total = None
    for name, target in labels.items():
        c = pixel_counts(gland_pixels(pool.pairs[name].target), gland_pixels(target))
        total = c if total is None else total + c
    return total.iou if total is not None else 1.0
