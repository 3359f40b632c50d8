"""The human-in-the-loop study: rounds of predict -> label (by strategy) -> retrain -> test.

Each round is the app's: the model's review maps (:func:`pathoseg.engine.rounds.review_maps`,
what the app serves), the simulated pathologist's corrections of those glands at native
resolution (what the app stores), and the one retrain round with its validation hold-out and
gate (:func:`pathoseg.engine.rounds.run_round`, what the app's worker runs). Only the test
on the held-out test set is the study's own. ``bench/app_loop.py`` runs the same study
through a real server and worker.

Layout of ``out`` (what makes it resumable: ``record.json`` is written last, so a round
without one is redone, and a round with one is never redone):

    seed<k>/round0/{model.pt, settings.json, record.json}        shared by all strategies
    seed<k>/<strategy>/round<r>/{labels/*.png, model.pt, settings.json, record.json}

``model.pt`` is the round's candidate; ``record.json`` says whether the gate activated it.
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
from tqdm import tqdm

from pathoseg.data.glas import GLAS_MPP
from pathoseg.data.images import read_target, write_label_png
from pathoseg.data.splits import Split, stratified_pick
from pathoseg.data.targets import gland_pixels
from pathoseg.engine.checkpoint import Checkpoint, load_checkpoint
from pathoseg.engine.device import choose_device
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.rounds import (
    LabelledImage,
    ReviewMaps,
    RoundOutcome,
    ScaledCache,
    Tallies,
    review_maps,
    run_round,
)
from pathoseg.engine.settings import RoundConfig, TrainConfig, without_unused_additions
from pathoseg.hitl import STUDY_SCALE
from pathoseg.hitl.annotator import DEFAULT_TOLERANCE_UM, CostModel, Effort, SimulatedAnnotator
from pathoseg.hitl.selection import rank
from pathoseg.hitl.strategies import Strategy, make_label
from pathoseg.io import write_json
from pathoseg.metrics import pixel_counts
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
    # the app's retrain round (its seed: the study's), the first model at the study's scale
    round: RoundConfig = field(default_factory=lambda: RoundConfig(train=TrainConfig(scale=STUDY_SCALE)))
    tolerance_um: float = DEFAULT_TOLERANCE_UM  # a gland outline this close to the truth is accepted as drawn
    um_per_px: float | None = None  # native pixel size of the data (None: the data set's, else GlaS's)
    cost: CostModel = field(default_factory=CostModel)
    test_limit: int | None = None  # evaluate on at most this many test images (quick runs)
    device: str | None = None

    @property
    def retrain(self) -> str:
        return self.round.retrain

    def quick(self) -> StudyConfig:
        """About ten minutes on 2 cores (``pathoseg hitl --quick``): short rounds at a small
        working scale, 20 test images."""
        r = self.round
        train = replace(r.train, scale=min(r.train.scale, 0.35), crop=min(r.train.crop, 160))
        rounds = replace(r, train=train, first_steps=60, warm=replace(r.warm, steps=30))
        return replace(self, round=rounds, test_limit=20)


@dataclass(frozen=True)
class Label:
    """A saved mask: the instance map, and whether a person drew or checked it (the app tells
    by the seconds or edits logged with the save; pseudo-labels log none)."""

    labels: np.ndarray
    reviewed: bool


@dataclass
class Pool:
    """Everything a seed's study needs about its images, held once in memory at native size."""

    split: Split
    pixels: dict[str, tuple[np.ndarray, np.ndarray]]  # training images with their true instance maps
    grades: dict[str, str | None]
    initial: list[str]
    pool: list[str]

    def labelled(self, name: str, labels: np.ndarray, reviewed: bool = True) -> LabelledImage:
        """``name`` labelled with ``labels``, as the app holds a first saved mask (version 1);
        ``reviewed``: a person drew or checked them (else: pseudo-labels)."""
        return LabelledImage.of(name, 1, self.pixels[name][0], labels, self.grades[name], reviewed)


def subset_test(split: Split, limit: int | None) -> Split:
    if not limit or len(split.test_names) <= limit:
        return split
    names = split.test_names
    keep = set(names[i] for i in np.linspace(0, len(names) - 1, limit).round().astype(int))
    return replace(split, test={p: [n for n in v if n in keep] for p, v in split.test.items()})


def make_pool(data, split: Split, initial_fraction: float, seed: int) -> Pool:
    train = split.train + split.val
    samples = data.subset(train)
    pixels = {s.name: s.load() for s in samples}
    rng = np.random.default_rng(seed)
    initial = sorted(stratified_pick(samples, initial_fraction, rng))
    pool = [n for n in train if n not in initial]
    return Pool(split, pixels, {s.name: s.grade for s in samples}, initial, pool)


def plan_batch(remaining: list[str], maps: dict[str, ReviewMaps], strategy: Strategy, selection: str, size: int,
               rng: np.random.Generator, uncertainty: dict[str, float] | None = None) -> tuple[list[str], set[str]]:
    """A round's images (``size`` of ``remaining``) and which of them the pathologist reviews;
    ``uncertainty`` per image (default: from ``maps``, as the app computes it)."""
    if uncertainty is None and maps:
        uncertainty = {n: m.uncertainty for n, m in maps.items()}
    batch = rank(remaining, selection, rng, uncertainty or None)[:size]
    n_review = math.ceil(strategy.review_fraction * len(batch)) if strategy.review_fraction > 0 else 0
    return batch, set(rank(batch, selection, rng, uncertainty or None)[:n_review])


def round_rng(seed: int, strategy: Strategy, r: int) -> np.random.Generator:
    return np.random.default_rng([seed, r, zlib.crc32(strategy.name.encode())])


def round_size(pool: Pool, rounds: int, r: int, remaining: int) -> int:
    return math.ceil(len(pool.pool) / rounds) if r < rounds else remaining


class StudyRunner:
    def __init__(self, data_path: str | Path, cfg: StudyConfig, out: Path, fresh: bool = False):
        self.cfg = cfg
        self.out = out
        self.fresh = fresh
        self.device = choose_device(cfg.device)
        self.plan = plan_data(data_path, "official", seed=0, val_fraction=0)
        self.mpp = cfg.um_per_px or self.plan.data.mpp or GLAS_MPP
        self.annotator = SimulatedAnnotator(tolerance_um=cfg.tolerance_um, cost=cfg.cost, um_per_px=self.mpp)
        self.cache = ScaledCache()
        self.tallies: dict[int, Tallies] = {}  # id(active checkpoint) -> its validation sums

    # -- the round, testing -----------------------------------------------------------------
    def _retrain(self, base: Checkpoint | None, labelled: list[LabelledImage], seed: int, r: int) -> RoundOutcome:
        outcome = run_round(base, labelled, replace(self.cfg.round, seed=seed), self.device, r, self.cache,
                            mpp=self.mpp, base_tallies=self.tallies.get(id(base)))
        if outcome.activate:  # the active model's validation sums, for the next round's gate
            self.tallies = {id(outcome.candidate): outcome.candidate_tallies}
        return outcome

    def score_test(self, ckpt: Checkpoint, split: Split) -> dict:
        segment = model_segmenter(ckpt.build(self.device), PredictConfig(scale=ckpt.scale), ckpt.instance_config(),
                                  self.device)
        results = evaluate_parts(self.plan.data, split, segment, progress=False, keep_pictures=False,
                                 anatomy_um=None)  # the rounds' own cost: pixel and object metrics only
        return summarize_parts(results)

    # -- resuming -------------------------------------------------------------------------
    def round_settings(self, strategy: Strategy | None = None) -> dict:
        """What a round's record depends on. Round 0 (``strategy`` None): the data split, the
        retrain round's settings (its seed is the study's), the initial labels, the annotator
        and the test subset. Later rounds add the strategy and the round plan. Left out: the
        device, how many seeds and which other strategies run (the seed is in the folder's name)."""
        c = self.cfg
        each_round = ("epochs", "seed", "budget_minutes", "progress", "select")  # set by each round, or no effect
        train = {k: v for k, v in without_unused_additions(c.round.train.to_dict()).items() if k not in each_round}
        rounds = {**asdict(replace(c.round, seed=0)), "train": train}
        settings = {"split": split_settings(self.plan.split), "round": rounds, "initial_fraction": c.initial_fraction,
                    "annotator": {"tolerance_um": c.tolerance_um, "um_per_px": self.mpp, "cost": asdict(c.cost)},
                    "test_limit": c.test_limit}
        if strategy is not None:
            settings = {"strategy": asdict(strategy), "rounds": c.rounds, "selection": c.selection, **settings}
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
    def round0(self, pool: Pool, seed: int, test_split: Split) -> tuple[Checkpoint, dict]:
        rdir = self.out / f"seed{seed}" / "round0"
        if self._finished(rdir, None, f"round 0 of seed {seed}"):
            return load_checkpoint(rdir / "model.pt"), json.loads((rdir / "record.json").read_text())
        labelled = [pool.labelled(n, pool.pixels[n][1]) for n in pool.initial]
        outcome = self._retrain(None, labelled, seed, 0)
        outcome.candidate.save(rdir / "model.pt")
        effort = sum((self.annotator.draw_from_scratch(pool.pixels[n][1]) for n in pool.initial), Effort())
        test = self.score_test(outcome.candidate, test_split)
        record = {"seed": seed, "round": 0, "strategy": "initial", "test": test, "label_iou": 1.0,
                  "effort": asdict(effort), **_round_fields(outcome), "selected": list(pool.initial),
                  "reviewed": list(pool.initial)}
        write_fingerprint(rdir, self.round_settings())
        write_json(rdir / "record.json", record)
        return outcome.candidate, record

    def run_round(self, active: Checkpoint, test: dict, labels: dict[str, Label], pool: Pool,
                  strategy: Strategy, seed: int, r: int, test_split: Split) -> tuple[Checkpoint, dict]:
        """Round ``r``: ``labels`` (name -> saved mask, in labelling order) grow by the round's
        images; returns the active model after the gate and the round's record."""
        rdir = self.out / f"seed{seed}" / strategy.name / f"round{r}"
        remaining = [n for n in pool.pool if n not in labels]
        need_maps = not strategy.oracle or self.cfg.selection == "uncertainty"
        start = time.perf_counter()
        model = active.build(self.device) if need_maps else None
        maps = {n: review_maps(model, active, pool.pixels[n][0], self.device) for n in remaining} if need_maps else {}
        predict_s = time.perf_counter() - start
        batch, reviewed = plan_batch(remaining, maps, strategy, self.cfg.selection,
                                     round_size(pool, self.cfg.rounds, r, len(remaining)), round_rng(seed, strategy, r))
        effort = Effort()
        for name in sorted(batch):  # saved in name order, as the app loop (hitl/app_loop.py) saves them
            target, cost = make_label(strategy, name in reviewed, maps.get(name), pool.pixels[name][1],
                                      self.annotator)
            labels[name] = Label(target, strategy.oracle or name in reviewed)
            effort = effort + cost
            write_label_png(rdir / "labels" / f"{name}.png", target)
        saved = [pool.labelled(n, t.labels, t.reviewed) for n, t in labels.items()]
        outcome = self._retrain(active, saved, seed, r)
        outcome.candidate.save(rdir / "model.pt")
        start = time.perf_counter()
        if outcome.activate:
            active, test = outcome.candidate, self.score_test(outcome.candidate, test_split)
        test_s = time.perf_counter() - start
        quality = label_quality({n: t.labels for n, t in labels.items()}, pool)
        record = {"seed": seed, "round": r, "strategy": strategy.name, "test": test, "test_s": test_s,
                  "label_iou": quality, "effort": asdict(effort), "predict_s": predict_s, **_round_fields(outcome),
                  "selected": batch, "reviewed": sorted(reviewed)}
        write_fingerprint(rdir, self.round_settings(strategy))
        write_json(rdir / "record.json", record)
        return active, record

    def resume_round(self, active: Checkpoint, labels: dict[str, Label], seed: int, strategy: Strategy,
                     r: int) -> tuple[Checkpoint, dict] | None:
        rdir = self.out / f"seed{seed}" / strategy.name / f"round{r}"
        if not self._finished(rdir, strategy, f"round {r} of {strategy.name}, seed {seed},"):
            return None
        record = json.loads((rdir / "record.json").read_text())
        for name in sorted(record["selected"]):
            labels[name] = Label(read_target(rdir / "labels" / f"{name}.png"),
                                 strategy.oracle or name in record["reviewed"])
        return (load_checkpoint(rdir / "model.pt") if record["activated"] else active), record

    def run(self) -> list[dict]:
        if self.fresh:
            self.start_over()
        records = []
        total = self.cfg.seeds * (1 + len(self.cfg.strategies) * self.cfg.rounds)
        bar = tqdm(total=total, desc="HITL study", unit="round", dynamic_ncols=True)
        for seed in range(self.cfg.seeds):
            split = self.plan.split
            test_split = subset_test(split, self.cfg.test_limit)
            pool = make_pool(self.plan.data, split, self.cfg.initial_fraction, seed)
            # every seed and strategy labels images its own way, all as "version 1": what the
            # cache holds from another one is not this one's label (the app: one project each)
            self.cache, self.tallies = ScaledCache(), {}
            ckpt0, rec0 = self.round0(pool, seed, test_split)
            records.append(rec0)
            bar.update(1)
            for strategy in self.cfg.strategies:
                self.cache, self.tallies = ScaledCache(), {}
                active, test = ckpt0, rec0["test"]
                labels = {n: Label(pool.pixels[n][1], True) for n in pool.initial}
                for r in range(1, self.cfg.rounds + 1):
                    bar.set_postfix(seed=seed, strategy=strategy.name, round=r)
                    resumed = self.resume_round(active, labels, seed, strategy, r)
                    active, rec = resumed or self.run_round(active, test, labels, pool, strategy, seed, r, test_split)
                    test = rec["test"]
                    records.append(rec)
                    bar.update(1)
        bar.close()
        return records


def _round_fields(outcome: RoundOutcome) -> dict:
    """What a record keeps of the retrain round: time, the gate's verdict and scores."""
    return {"train_s": outcome.train_s, "gate_s": outcome.gate_s, "round_s": outcome.train_s + outcome.gate_s,
            "activated": outcome.activate, "gate": outcome.reason, "validation": outcome.validation,
            "val_scores": {"candidate": outcome.candidate_scores, "active": outcome.base_scores}}


def label_quality(labels: dict[str, np.ndarray], pool: Pool) -> float:
    """Pooled IoU of the saved masks against ground truth (IGNORE counts as background)."""
    total = None
    for name, target in labels.items():
        c = pixel_counts(gland_pixels(pool.pixels[name][1]), gland_pixels(target))
        total = c if total is None else total + c
    return total.iou if total is not None else 1.0
