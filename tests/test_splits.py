from __future__ import annotations

import json

import pytest

from pathoseg.data import load_dataset
from pathoseg.data.splits import Split, make_split
from pathoseg.errors import PathosegError


def test_official_split(glas_dir):
    data = load_dataset(glas_dir)
    split = make_split(data, "official", seed=0, val_fraction=0.1)
    assert len(split.train) + len(split.val) == 85
    assert len(split.test["testA"]) == 60 and len(split.test["testB"]) == 20
    assert not set(split.train) & set(split.val)
    assert all(n.startswith("train_") for n in split.train + split.val)


def test_random_split_is_stratified_and_deterministic(glas_dir):
    data = load_dataset(glas_dir)
    a = make_split(data, "random", seed=7, val_fraction=0)
    b = make_split(data, "random", seed=7, val_fraction=0)
    c = make_split(data, "random", seed=8, val_fraction=0)
    assert a == b and a.test != c.test
    assert len(a.test["test"]) == 33 and len(a.train) == 132
    grade = {s.name: s.grade for s in data}
    for names in (a.train, a.test["test"]):
        frac = sum(grade[n] == "malignant" for n in names) / len(names)
        assert abs(frac - 91 / 165) < 0.02


def test_split_json_round_trip(synth_dir, tmp_path):
    data = load_dataset(synth_dir)
    split = make_split(data, "official", seed=1)  # no GlaS parts: falls back to random
    assert split.kind == "random"
    path = split.save(tmp_path / "split.json")
    assert Split.load(path) == split
    Split.load(path).check(data)


def test_odd_split_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PathosegError, match=r"bad\.json: split file is not valid JSON"):
        Split.load(bad)
    bad.write_text(json.dumps({"kind": "random", "seed": 0}))
    with pytest.raises(PathosegError, match="malformed split file"):
        Split.load(bad)
    bad.write_text(json.dumps({"kind": "random", "seed": 0, "train": ["a"], "test": {"test": ["a"]}}))
    with pytest.raises(PathosegError, match="share images"):
        Split.load(bad)
