"""Train / validation / test splits, written to and read from JSON so any run can be repeated."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pathoseg.data.samples import Sample, SampleSet
from pathoseg.errors import PathosegError
from pathoseg.io import write_json

SPLIT_KINDS = ("official", "random")


@dataclass
class Split:
    kind: str
    seed: int
    train: list[str]
    val: list[str] = field(default_factory=list)
    test: dict[str, list[str]] = field(default_factory=dict)  # part name -> image names

    @property
    def test_names(self) -> list[str]:
        return [n for part in self.test.values() for n in part]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = "split") -> Split:
        try:
            split = cls(kind=str(d["kind"]), seed=int(d["seed"]), train=list(d["train"]),
                        val=list(d.get("val", [])), test={k: list(v) for k, v in d["test"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PathosegError(f"malformed split file ({exc})", source) from None
        overlap = set(split.train) & set(split.test_names)
        if overlap:
            raise PathosegError(f"train and test share images: {sorted(overlap)[:3]}", source)
        return split

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Split:
        path = Path(path)
        if not path.is_file():
            raise PathosegError("split file not found", path)
        try:
            return cls.from_dict(json.loads(path.read_text()), path)
        except json.JSONDecodeError as exc:
            raise PathosegError(f"split file is not valid JSON ({exc.msg})", path) from None

    def check(self, data: SampleSet) -> None:
        missing = [n for n in [*self.train, *self.val, *self.test_names] if n not in data.names]
        if missing:
            raise PathosegError(f"split names images the dataset lacks: {missing[:3]}", data.root)


def stratified_pick(samples: list[Sample], fraction: float, rng: np.random.Generator) -> set[str]:
    """Pick ``fraction`` of each grade group (all one group when grades are unknown)."""
    picked: set[str] = set()
    groups: dict[str, list[str]] = {}
    for s in samples:
        groups.setdefault(s.grade, []).append(s.name)
    for names in groups.values():
        k = round(fraction * len(names))
        if fraction > 0 and len(names) > 1:
            k = min(max(k, 1), len(names) - 1)
        picked.update(rng.permutation(names)[:k].tolist())
    return picked


def make_split(data: SampleSet, kind: str = "official", seed: int = 0,
               val_fraction: float = 0.1, test_fraction: float = 0.2) -> Split:
    """``official``: GlaS train / testA / testB. ``random``: a stratified 8:2 split by seed.

    A validation hold-out (``val_fraction`` of train, stratified by grade) is carved from train.
    Data without GlaS parts always uses ``random``.
    """
    if kind not in SPLIT_KINDS:
        raise PathosegError(f"unknown split {kind!r}; choose from {', '.join(SPLIT_KINDS)}")
    rng = np.random.default_rng(seed)
    if kind == "official" and data.has_parts:
        train_pool = [s for s in data if s.part == "train"]
        test = {p: [s.name for s in data if s.part == p] for p in ("testA", "testB")}
    else:
        kind = "random"
        test_names = stratified_pick(list(data), test_fraction, rng)
        train_pool = [s for s in data if s.name not in test_names]
        test = {"test": [s.name for s in data if s.name in test_names]}
    val = stratified_pick(train_pool, val_fraction, rng) if val_fraction > 0 else set()
    return Split(
        kind=kind,
        seed=seed,
        train=[s.name for s in train_pool if s.name not in val],
        val=[s.name for s in train_pool if s.name in val],
        test={k: v for k, v in test.items() if v},
    )
