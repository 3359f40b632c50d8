"""The one retrain round: what the HITL study measures is what the app's worker runs.

A round takes the labelled images of a project (in the order they were first labelled) and
the active model (the *base*; None for a project's first model), holds out the validation
set (:func:`holdout`), trains a candidate on the rest, scores candidate and base on the
validation set, and says whether the candidate may become active (:class:`RoundOutcome`).
The candidate derives from the base (:meth:`Checkpoint.derive`): working scale, µm/px, head
and learned decoder settings travel with it, plus the images and mask versions it learned
from. Predictions for review (:func:`review_maps`) are made the same way for both callers.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pathoseg.data.cache import ScaledPair, to_target
from pathoseg.data.resolution import resample_image, resample_labels
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.engine.instances import decode_instances, learned_min_size
from pathoseg.engine.predict import PredictConfig, predict_maps
from pathoseg.engine.settings import GateConfig, RoundConfig
from pathoseg.engine.train import EpochRecord, fit
from pathoseg.engine.wsi.image import large_image_maps
from pathoseg.metrics import ObjectTally, object_metrics, object_tally, pixel_counts
from pathoseg.metrics.pixel import PixelCounts
from pathoseg.metrics.uncertainty import mean_entropy
from pathoseg.models import GlandSegmenter, build_model, freeze_encoder_stages

Pixels = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image as a round sees it; ``load`` gives its RGB and instance labels (0
    background, 1..N glands) at the project's native resolution, read only when needed (a
    round resizes only new labels and scores only the validation images)."""

    name: str
    version: int  # the mask version (the study: the round it was labelled in)
    load: Callable[[], Pixels] = field(repr=False, compare=False)
    grade: str | None = None
    # a person drew or checked these labels (an import, or a save that logged time or edits);
    # False: the model's own glands saved as they were (pseudo-labels), never validation
    reviewed: bool = True

    @classmethod
    def of(cls, name: str, version: int, image: np.ndarray, labels: np.ndarray, grade: str | None = None,
           reviewed: bool = True) -> LabelledImage:
        return cls(name, version, lambda: (image, labels), grade, reviewed)


def holdout(labelled: Sequence[LabelledImage], fraction: float) -> set[str]:
    """The validation set: walking the reviewed images in labelling order, an image is held
    out when its grade's group holds fewer than ``floor(n x fraction)`` of the ``n`` reviewed
    images seen so far (:class:`pathoseg.engine.settings.GateConfig`). Earlier decisions never
    change. Unreviewed labels (the model's own glands, saved as they were) always train: a
    model scored against its own predictions would always look best."""
    seen: dict[str | None, int] = {}
    held: dict[str | None, int] = {}
    out = set()
    for item in labelled:
        if not item.reviewed:
            continue
        group = item.grade
        seen[group] = seen.get(group, 0) + 1
        if held.get(group, 0) < math.floor(seen[group] * fraction + 1e-9):
            held[group] = held.get(group, 0) + 1
            out.add(item.name)
    return out


def validation_digest(validation: Sequence[LabelledImage]) -> str:
    """Which validation set (names and mask versions): scores compare only on the same one."""
    text = "\n".join(f"{i.name}:{i.version}" for i in sorted(validation, key=lambda i: i.name))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_seed(seed: int, models_before: int) -> int:
    """Round ``r`` (``models_before`` = r: the models the project had) of seed ``s``."""
    return seed * 1000 + models_before


class ScaledCache:
    """Images and targets at a working scale, kept between rounds: images never change and a
    mask version is final, so a round resizes only what was labelled since the last one."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, int, float], ScaledPair] = {}

    def pairs(self, labelled: Sequence[LabelledImage], scale: float) -> list[ScaledPair]:
        out = []
        for item in labelled:
            key = (item.name, item.version, scale)
            if key not in self._pairs:
                image, labels = item.load()
                self._pairs[key] = ScaledPair(item.name, resample_image(image, scale),
                                              resample_labels(to_target(labels), scale))
            out.append(self._pairs[key])
        current = {(item.name, item.version, scale) for item in labelled}
        for key in [k for k in self._pairs if k[0] in {i.name for i in labelled} and k not in current]:
            del self._pairs[key]  # superseded mask versions
        return out


# Native pixels: larger images are predicted tile by tile, in bounded memory. Whole, an image
# costs ~100 bytes a pixel (0.4 GB at this size; a GlaS image is 0.4 MP).
LARGE_IMAGE = 2048 * 2048
LARGE_TILE = 512  # their window side at the working scale: the network holds ~0.12 GB for one (0.45 at 1024)


@dataclass
class ReviewMaps:
    """What a pathologist reviews (and the app serves): the gland probability as a byte per
    pixel, the model's glands, and the image's uncertainty."""

    probs: np.ndarray  # uint8, probability x 255, native size
    glands: np.ndarray  # instance ids, native size
    # float32 in [0, 1] (for the uncertainty); None for a large image, whose float map is never held
    gland_probs: np.ndarray | None = field(repr=False)
    entropy: float | None = field(default=None, repr=False)  # a large image's uncertainty, made band by band

    @property
    def uncertainty(self) -> float:
        """Mean binary entropy of the gland probability (the app's queue order)."""
        return mean_entropy(self.gland_probs) if self.gland_probs is not None else float(self.entropy)


def review_maps(model: GlandSegmenter, ckpt: Checkpoint, image: np.ndarray, device: torch.device | str) -> ReviewMaps:
    """The model's maps of ``image`` at native size. An image over :data:`LARGE_IMAGE` pixels
    goes through the slide engine's tiles and stitching (:func:`large_image_maps`), so its
    memory stays bounded; smaller ones are predicted whole."""
    if image.shape[0] * image.shape[1] > LARGE_IMAGE:
        large = large_image_maps(model, image, ckpt.scale, ckpt.instance_config(), LARGE_TILE, device)
        return ReviewMaps(large.probs, large.glands, None, large.entropy)
    maps = predict_maps(model, image, PredictConfig(scale=ckpt.scale), device)
    probs = maps["gland"]
    return ReviewMaps(np.round(probs * 255).astype(np.uint8), decode_instances(maps, ckpt.instance_config()), probs)


Tallies = dict[tuple[str, int], tuple[PixelCounts, ObjectTally]]  # (image, mask version) -> one model's sums


def score(model: GlandSegmenter, ckpt: Checkpoint, images: Sequence[LabelledImage], device: torch.device | str,
          tallies: Tallies | None = None) -> dict[str, float]:
    """Pooled pixel IoU and GlaS object F1 of the model's glands against ``images``' labels,
    at native resolution (so models of different working scales compare). ``tallies``: this
    model's per-image sums from earlier calls (the metrics are additive), filled in as it goes,
    so a growing validation set costs only its new images."""
    tallies = {} if tallies is None else tallies
    counts, tally = PixelCounts(0, 0, 0), ObjectTally()
    for item in images:
        key = (item.name, item.version)
        if key not in tallies:
            image, labels = item.load()
            glands = review_maps(model, ckpt, image, device).glands
            tallies[key] = (pixel_counts(labels, glands), object_tally(labels, glands))
        counts, tally = counts + tallies[key][0], tally + tallies[key][1]
    return {"iou": counts.iou, "f1": object_metrics([tally])["f1"], "images": len(images)}


@dataclass
class RoundOutcome:
    candidate: Checkpoint
    activate: bool
    reason: str  # one sentence: why it is (not) activated
    validation: list[str]  # the held-out images
    candidate_scores: dict | None = None
    base_scores: dict | None = None
    train_s: float = 0.0
    gate_s: float = 0.0
    candidate_tallies: Tallies = field(default_factory=dict)  # pass them as base_tallies once it is active


Progress = Callable[[float, str], None]  # (fraction done, message)


def _steps_to_epochs(steps: int, batch: int, n_images: int) -> int:
    return max(1, math.ceil(steps * batch / max(1, n_images)))


def train_candidate(base: Checkpoint | None, train: Sequence[LabelledImage], cfg: RoundConfig,
                    device: torch.device, seed: int, cache: ScaledCache | None = None,
                    progress: Progress | None = None, mpp: float | None = None) -> tuple[Checkpoint, float]:
    """A model trained on ``train`` (the validation set already taken out): warm-started from
    ``base``, or from ImageNet (no base, or ``retrain="scratch"``); returns it and the seconds
    it trained. ``mpp``: the images' µm/px, recorded in a first model."""
    warm = base is not None and cfg.retrain == "warm"
    scale = base.scale if base is not None else cfg.train.scale
    if warm:
        model = base.build(device)
        model.train()
        steps, lr, frozen = cfg.warm.steps, cfg.train.lr * cfg.warm.lr_scale, cfg.warm.freeze_stages
        crop = cfg.warm.crop or cfg.train.crop
    else:
        torch.manual_seed(seed)
        model = build_model(base.model_config if base is not None else cfg.train.model)
        steps, lr, frozen, crop = cfg.first_steps, cfg.train.lr, 0, cfg.train.crop
    freeze_encoder_stages(model, frozen)
    pairs = (cache or ScaledCache()).pairs(sorted(train, key=lambda i: i.name), scale)
    epochs = _steps_to_epochs(steps, cfg.train.batch_size, len(pairs))
    tcfg = replace(cfg.train, model=model.config, epochs=epochs, lr=lr, seed=seed, scale=scale, crop=crop,
                   progress=False, budget_minutes=None)

    def on_epoch(record: EpochRecord, *_) -> None:
        if progress is not None:
            progress(record.epoch / epochs, f"epoch {record.epoch}/{epochs}")

    start = time.perf_counter()
    fit(model, pairs, [], tcfg, device, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    for p in model.parameters():  # the saved model and the next round start unfrozen
        p.requires_grad_(True)
    trained_on = [[i.name, i.version] for i in sorted(train, key=lambda i: i.name)]
    round_cfg = {"steps": steps, "lr": lr, "freeze_stages": frozen, "seed": seed, "warm": warm}
    if base is not None:
        ckpt = base.derive(model, train_config={**tcfg.to_dict(), "round": round_cfg}, trained_on=trained_on)
    else:
        floor = learned_min_size((p.target for p in pairs), scale)
        ckpt = Checkpoint.of(model, scale, train_config={**tcfg.to_dict(), "round": round_cfg},
                             instances={"min_size": floor} if floor else {}, mpp=mpp, trained_on=trained_on)
    return ckpt, seconds


def gate(candidate: tuple[GlandSegmenter, Checkpoint], base: tuple[GlandSegmenter, Checkpoint] | None,
         validation: Sequence[LabelledImage], cfg: RoundConfig, device: torch.device, n_labelled: int,
         candidate_tallies: Tallies | None = None, base_tallies: Tallies | None = None,
         ) -> tuple[bool, str, dict | None, dict | None]:
    """(activate, reason, candidate's scores, base's scores) on the validation set."""
    if not validation:
        first = math.ceil(1 / cfg.gate.holdout - 1e-9) if cfg.gate.holdout > 0 else None
        why = (f"{n_labelled} reviewed image{'s' if n_labelled != 1 else ''}: too few to hold one out "
               f"(the first is held out at {first})" if first else "the validation hold-out is off")
        return True, f"no gate applied: {why}", None, None
    candidate_tallies = {} if candidate_tallies is None else candidate_tallies
    base_tallies = {} if base_tallies is None else base_tallies
    mine = score(*candidate, validation, device, candidate_tallies)
    if base is None:
        return True, "the project's first model", mine, None
    theirs = score(*base, validation, device, base_tallies)
    keys = [(i.name, i.version) for i in validation]
    best = best_differences([candidate_tallies[k] for k in keys], [base_tallies[k] for k in keys], cfg.gate)
    t = cfg.gate
    worse = [f"{what} {mine[key]:.3f} vs {theirs[key]:.3f}, at best {best[key]:+.3f}"
             for what, key, tol in (("IoU", "iou", t.iou_tolerance), ("object F1", "f1", t.f1_tolerance))
             if best[key] < -tol]
    n = len(validation)
    if worse:
        return False, (f"worse than the active model on the {n} validation images, beyond what they can tell "
                       f"apart ({'; '.join(worse)})"), mine, theirs
    return True, (f"not worse than the active model on the {n} validation images (IoU {mine['iou']:.3f} vs "
                  f"{theirs['iou']:.3f}, object F1 {mine['f1']:.3f} vs {theirs['f1']:.3f})"), mine, theirs


def best_differences(mine: Sequence[tuple[PixelCounts, ObjectTally]], theirs: Sequence[tuple[PixelCounts, ObjectTally]],
                     gate: GateConfig) -> dict[str, float]:
    """How much better the candidate could be than the active model (pooled IoU, object F1)
    given how few validation images there are: the ``gate.confidence`` quantile of the
    difference over bootstrap resamplings of the images (seeded: the same verdict every time).
    A candidate is refused only when even that is worse by more than the tolerance."""
    def sums(pairs):
        return np.array([[c.tp, c.fp, c.fn, o.tp, o.fp, o.fn] for c, o in pairs], dtype=np.float64)

    picks = np.random.default_rng(0).integers(0, len(mine), size=(gate.resamples, len(mine)))
    a, b = sums(mine)[picks].sum(axis=1), sums(theirs)[picks].sum(axis=1)  # (resamples, 6) pooled sums

    def iou(s: np.ndarray) -> np.ndarray:
        union = s[:, 0] + s[:, 1] + s[:, 2]
        return np.where(union > 0, s[:, 0] / np.maximum(union, 1), 1.0)

    def f1(s: np.ndarray) -> np.ndarray:
        detected = 2 * s[:, 3] + s[:, 4] + s[:, 5]
        return np.where(detected > 0, 2 * s[:, 3] / np.maximum(detected, 1), 1.0)

    q = gate.confidence
    return {"iou": float(np.quantile(iou(a) - iou(b), q)), "f1": float(np.quantile(f1(a) - f1(b), q))}


def run_round(base: Checkpoint | None, labelled: Sequence[LabelledImage], cfg: RoundConfig, device: torch.device,
              models_before: int, cache: ScaledCache | None = None, progress: Progress | None = None,
              mpp: float | None = None, base_tallies: Tallies | None = None) -> RoundOutcome:
    """One round: hold out, train a candidate, gate it against ``base``. ``labelled`` in the
    order the images were first labelled; ``models_before``: how many models the project had
    (it seeds the round); ``base_tallies``: the base's validation sums from earlier rounds
    (:func:`score`)."""
    if not labelled:
        raise ValueError("no corrected or imported masks to train on yet")
    held = holdout(labelled, cfg.gate.holdout)
    validation = [i for i in labelled if i.name in held]
    train = [i for i in labelled if i.name not in held]
    ckpt, train_s = train_candidate(base, train, cfg, device, round_seed(cfg.seed, models_before), cache,
                                    progress, mpp)
    if progress is not None:
        progress(1.0, f"scoring on {len(validation)} validation images")
    start = time.perf_counter()
    base_pair = (base.build(device), base) if base is not None and validation else None
    tallies: Tallies = {}
    activate, reason, mine, theirs = gate((ckpt.build(device), ckpt), base_pair, validation, cfg, device,
                                          sum(i.reviewed for i in labelled), tallies, base_tallies)
    gate_s = time.perf_counter() - start
    ckpt.metrics = {**ckpt.metrics, "train_s": train_s, "gate_s": gate_s}  # what the round cost, with the model
    ckpt.train_config = {**ckpt.train_config, "validation": sorted(held)}  # what it was not trained on
    return RoundOutcome(ckpt, activate, reason, sorted(held), mine, theirs, train_s, gate_s, tallies)
