"""Resume and reuse check the settings a run was made with (train --resume, compare, hitl)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from pathoseg.cli import main
from pathoseg.data.synthetic import SyntheticConfig, write_synthetic
from pathoseg.engine.train import TrainConfig
from pathoseg.errors import PathosegError
from pathoseg.hitl.strategies import BUILTIN
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.pipeline import compare
from pathoseg.runconfig import (
    check_fingerprint,
    first_difference,
    run_fingerprint,
    stamp,
    stored_settings,
    write_fingerprint,
)
from tiny import tiny_round

# -- the helper ------------------------------------------------------------------------------


def test_fingerprint_ignores_key_order_and_names_the_first_difference(tmp_path):
    a = {"epochs": 2, "model": {"preset": "lite0", "head": "contour"}, "crop": (64, 64)}
    b = {"crop": [64, 64], "model": {"head": "contour", "preset": "lite0"}, "epochs": 2}
    assert run_fingerprint(a) == run_fingerprint(b) and len(run_fingerprint(a)) == 16
    assert stamp(a)["settings"]["crop"] == [64, 64]
    other_head = {**b, "model": {"head": "semantic", "preset": "lite0"}}
    assert first_difference(a, other_head) == ("model.head", "contour", "semantic")
    assert first_difference(a, {**a, "lr": 0.1}) == ("lr", "(unset)", 0.1)
    assert first_difference(a, b) is None

    write_fingerprint(tmp_path, a)
    check_fingerprint(tmp_path, b, "the run")  # same settings: nothing to say
    with pytest.raises(PathosegError) as err:
        check_fingerprint(tmp_path, {**a, "epochs": 5}, "the run")
    message = str(err.value)
    assert "epochs=2, now epochs=5" in message and "--fresh" in message and "\n" not in message


def test_results_without_recorded_settings_are_reused_with_a_warning(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"model": "lite0"}))
    assert stored_settings(tmp_path, "result.json") is None
    with pytest.warns(UserWarning, match="reused unchecked"):
        check_fingerprint(tmp_path, {"epochs": 1}, "the run", name="result.json")
    # ... unless the results themselves say what made them
    with pytest.raises(PathosegError, match="epochs=3, now epochs=1"):
        check_fingerprint(tmp_path, {"epochs": 1}, "the run", name="result.json", fallback={"epochs": 3})
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(PathosegError, match=r"unreadable.*--fresh"):
        check_fingerprint(tmp_path, {"epochs": 1}, "the run")


# -- train --resume --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("resume-data"), n=8, seed=5, cfg=SyntheticConfig(size=(80, 96)))


def _history(out: Path) -> list[dict]:
    with (out / "history.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_resume_checks_settings_and_fresh_starts_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(tiny_data), "--out", str(out), "--split", "random", "--val-fraction", "0.2",
            "--weights", "none", "--crop", "64", "--scale", "1.0", "--batch-size", "4", "--device", "cpu"]
    # a budget of a few milliseconds stops the 2-epoch run after its first epoch: a run to resume
    assert main([*base, "--epochs", "2", "--budget", "0.0001"]) == 0
    assert len(_history(out)) == 1
    recorded = json.loads((out / "settings.json").read_text())
    assert recorded["settings"]["epochs"] == 2 and "progress" not in recorded["settings"]
    assert recorded["fingerprint"] == run_fingerprint(recorded["settings"])
    capsys.readouterr()

    # other settings: one line naming the first difference, nothing trained or written
    stamp_before = (out / "last.pt").stat().st_mtime_ns
    assert main([*base, "--epochs", "3", "--budget", "0.0001", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs=2, now epochs=3" in err and "--fresh" in err and len(err.splitlines()) == 1
    assert (out / "last.pt").stat().st_mtime_ns == stamp_before
    assert main([*base, "--epochs", "2", "--budget", "0.0001", "--crop", "48", "--resume"]) == 2
    assert "crop=64, now crop=48" in capsys.readouterr().err
    # trained by the default recipe, resumed under another: the line names the recipe to add
    assert main([*base, "--epochs", "2", "--budget", "0.0001", "--recipe", "quick", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with --recipe glas, not quick; add --recipe glas" in err and len(err.splitlines()) == 1
    assert (out / "last.pt").stat().st_mtime_ns == stamp_before

    # a run from before settings were stored is checked against what its checkpoint records
    saved = (out / "settings.json").read_bytes()
    (out / "settings.json").unlink()
    assert main([*base, "--epochs", "3", "--budget", "0.0001", "--resume"]) == 2
    assert "epochs=2, now epochs=3" in capsys.readouterr().err
    (out / "settings.json").write_bytes(saved)

    # the same settings: resumes where it stopped (epoch 2 follows epoch 1)
    assert main([*base, "--epochs", "2", "--budget", "0.0001", "--resume"]) == 0
    assert [int(h["epoch"]) for h in _history(out)] == [1, 2]

    # --fresh: starts over with the new settings, even next to --resume
    assert main([*base, "--epochs", "1", "--resume", "--fresh"]) == 0
    assert [int(h["epoch"]) for h in _history(out)] == [1]
    assert json.loads((out / "settings.json").read_text())["settings"]["epochs"] == 1


# -- compare's finished runs -----------------------------------------------------------------


def _fake_child(calls: list):
    """Stands in for the training child process: writes a result.json as run_one does."""

    def spawn(target, data_path, cfg, model, seed, out, settings):
        calls.append((model, seed))
        Path(out).mkdir(parents=True, exist_ok=True)
        record = {"model": model, "seed": seed, "metrics": {}, **stamp(settings)}
        (Path(out) / "result.json").write_text(json.dumps(record))
        return 0

    return spawn


def test_compare_reuses_only_runs_made_with_the_same_settings(synth_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(compare, "_spawn", _fake_child(calls))
    train = replace(TrainConfig(), epochs=2, batch_size=4, crop=64, scale=1.0)
    cfg = compare.CompareConfig(models=["lite0"], protocol="seed", train=train, device="cpu")
    run_dir = tmp_path / "runs" / "lite0" / "seed0"
    first = compare._run_isolated(str(synth_dir), cfg, "lite0", 0, run_dir)
    assert calls == [("lite0", 0)] and first["settings"]["training"]["epochs"] == 2
    assert first["settings"]["device"] == "cpu" and "progress" not in first["settings"]["training"]
    # the same settings (the gallery size and the number of seeds do not count): reused
    again = compare._run_isolated(str(synth_dir), replace(cfg, gallery=7, seeds=3), "lite0", 0, run_dir)
    assert calls == [("lite0", 0)] and again == first
    # another --epochs, --budget or protocol: stop, naming it
    with pytest.raises(PathosegError, match=r"lite0 seed 0 run was made with training\.epochs=2, now "
                                            r"training\.epochs=5; pass --fresh"):
        compare._run_isolated(str(synth_dir), replace(cfg, train=replace(train, epochs=5)), "lite0", 0, run_dir)
    with pytest.raises(PathosegError, match=r"training\.budget_minutes=null, now training\.budget_minutes=1\.5"):
        compare._run_isolated(str(synth_dir), replace(cfg, train=replace(train, budget_minutes=1.5)), "lite0", 0,
                              run_dir)
    with pytest.raises(PathosegError, match="protocol=\"seed\", now protocol=\"official\""):
        compare._run_isolated(str(synth_dir), replace(cfg, protocol="official"), "lite0", 0, run_dir)
    assert calls == [("lite0", 0)]
    # --fresh: trains again with the new settings
    (run_dir / "stale.png").write_bytes(b"old")
    newer = compare._run_isolated(str(synth_dir), replace(cfg, train=replace(train, epochs=5)), "lite0", 0, run_dir,
                                  fresh=True)
    assert calls == [("lite0", 0)] * 2 and newer["settings"]["training"]["epochs"] == 5
    assert not (run_dir / "stale.png").exists()


def test_a_setting_added_later_keeps_older_runs_fingerprints_while_it_is_off():
    from pathoseg.pipeline.training import training_settings

    split = {"kind": "official", "train": ["a"], "val": [], "test": ["b"]}
    before = {k: v for k, v in TrainConfig().to_dict().items() if k != "boundary_weight"}  # a run made before
    assert training_settings(TrainConfig(), split) == training_settings(before, split)
    assert training_settings(TrainConfig().to_dict(), split) == training_settings(before, split)  # a checkpoint's
    on = training_settings(TrainConfig(boundary_weight=3.0), split)
    assert first_difference(on, training_settings(before, split))[0] == "boundary_weight"


def test_compare_run_settings_follow_the_split(synth_dir):
    cfg = compare.CompareConfig(models=["lite0"], protocol="seed", device="cpu")
    s0, s1 = (compare.run_settings(str(synth_dir), cfg, "lite0", seed) for seed in (0, 1))
    assert first_difference(s0, s1)[0] == "training.seed"  # the seed changes the split too
    assert s0["training"]["split"]["images"] != s1["training"]["split"]["images"]


# -- hitl rounds ------------------------------------------------------------------------------


def _study(**changes) -> StudyConfig:
    cfg = StudyConfig(strategies=[BUILTIN["auto"]], rounds=1, round=tiny_round(2, 2, weights="none"),
                      initial_fraction=0.3, test_limit=1, device="cpu")
    return replace(cfg, **changes)


def test_hitl_round_settings_leave_out_what_does_not_change_a_round(synth_dir, tmp_path):
    runner = StudyRunner(synth_dir, _study(), tmp_path)
    same = StudyRunner(synth_dir, _study(seeds=3, device="cpu", strategies=[BUILTIN["auto"], BUILTIN["hitl"]]),
                       tmp_path)
    auto = BUILTIN["auto"]
    assert runner.round_settings(auto) == same.round_settings(auto)
    assert runner.round_settings() == StudyRunner(synth_dir, _study(rounds=5), tmp_path).round_settings()
    assert first_difference(runner.round_settings(auto),
                            StudyRunner(synth_dir, _study(rounds=5), tmp_path).round_settings(auto))[0] == "rounds"
    assert "epochs" not in runner.round_settings()["round"]["train"]  # each round sets its own


def test_hitl_resume_checks_each_round_and_fresh_starts_over(synth_dir, tmp_path):
    auto = BUILTIN["auto"]
    runner = StudyRunner(synth_dir, _study(), tmp_path)
    r0, r1 = tmp_path / "seed0" / "round0", tmp_path / "seed0" / "auto" / "round1"
    for rdir, strategy in ((r0, None), (r1, auto)):
        write_fingerprint(rdir, runner.round_settings(strategy))
        (rdir / "record.json").write_text(json.dumps({"selected": []}))
    assert runner._finished(r0, None, "round 0") and runner._finished(r1, auto, "round 1")
    assert not runner._finished(tmp_path / "seed0" / "auto" / "round2", auto, "round 2")

    more_rounds = StudyRunner(synth_dir, _study(rounds=3), tmp_path)
    with pytest.raises(PathosegError, match=r"round 1 of auto, seed 0, was made with rounds=1, now rounds=3"):
        more_rounds.resume_round(None, {}, 0, auto, 1)
    with pytest.raises(PathosegError, match=r"round 0 of seed 0 was made with round\.first_steps=2, now "
                       r"round\.first_steps=9"):
        StudyRunner(synth_dir, _study(round=tiny_round(9, 2, weights="none")), tmp_path).round0(None, 0, None)
    other = write_synthetic(tmp_path / "other", n=10, seed=8, cfg=SyntheticConfig(size=(96, 128)))
    with pytest.raises(PathosegError, match=r"split\.images="):  # another data set: other images
        StudyRunner(other, _study(), tmp_path).round0(None, 0, None)

    # fresh: the study's seeds start over; folders of seeds it does not run stay
    (tmp_path / "seed4").mkdir()
    StudyRunner(synth_dir, _study(rounds=3), tmp_path, fresh=True).start_over()
    assert not (tmp_path / "seed0").exists() and (tmp_path / "seed4").is_dir()


@pytest.mark.slow
def test_hitl_study_resumes_with_the_same_settings_only(synth_dir, tmp_path):
    first = StudyRunner(synth_dir, _study(), tmp_path).run()
    record = tmp_path / "seed0" / "auto" / "round1" / "record.json"
    stamp_before = record.stat().st_mtime_ns
    resumed = StudyRunner(synth_dir, _study(), tmp_path).run()  # resumed: nothing redone
    assert json.dumps(resumed, sort_keys=True) == json.dumps(first, sort_keys=True)
    assert record.stat().st_mtime_ns == stamp_before
    with pytest.raises(PathosegError, match=r"round\.warm\.steps=2, now round\.warm\.steps=3"):
        StudyRunner(synth_dir, _study(round=tiny_round(2, 3, weights="none")), tmp_path).run()
    again = StudyRunner(synth_dir, _study(round=tiny_round(2, 3, weights="none")), tmp_path, fresh=True).run()
    assert len(again) == 2 and record.stat().st_mtime_ns != stamp_before
