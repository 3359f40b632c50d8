"""One loop: the app's retrain is the HITL study's round. A retrained model derives from its
base (scale, µm/px, head, decoder settings, provenance), a worse candidate is stored but not
activated, and the study run through the real app labels exactly as the in-process study."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from pathoseg.data.images import read_target
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample, write_synthetic
from pathoseg.engine import rounds
from pathoseg.engine.checkpoint import Checkpoint, load_checkpoint
from pathoseg.engine.rounds import LabelledImage, holdout
from pathoseg.errors import PathosegError
from pathoseg.hitl.strategies import BUILTIN
from pathoseg.hitl.study import StudyConfig, StudyRunner
from pathoseg.models import ModelConfig, build_model
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services.images import add_image
from pathoseg.server.services.imports import add_folder
from pathoseg.server.services.models import register_model
from pathoseg.server.services.worker import Worker
from pathoseg.server.storage import Job, ModelVersion, Project
from tiny import create_user, tiny_round, tiny_worker

CFG = SyntheticConfig(size=(64, 64))
HEAD_BIAS = "net.segmentation_head.0.bias"


def _checkpoint(path, gland_bias: float | None = None, **fields) -> str:
    """A lite0 checkpoint; ``gland_bias`` forces its gland channel on (+) or off (-) everywhere."""
    model = build_model(ModelConfig("lite0", weights="none"))
    if gland_bias is not None:
        with torch.no_grad():
            bias = model.state_dict()[HEAD_BIAS]
            bias[0] = gland_bias
            bias[1:] = -20.0  # no contours: one interior per blob
    Checkpoint.of(model, **fields).save(path)
    return str(path)


def _project(tmp_path, labelled: int, unlabelled: int = 1) -> Project:
    project = Project(tmp_path / "lab", create=True)
    for i in range(labelled + unlabelled):
        image, labels = synthetic_sample(600 + i, CFG)
        add_image(project, f"img{i}", image, labels if i < labelled else None)
    return project


def _job(project: Project, job_id: int) -> Job:
    with project.session() as s:
        return s.get(Job, job_id)


def _models(project: Project) -> dict[int, bool]:
    with project.session() as s:
        return {m.version: m.active for m in s.scalars(select(ModelVersion).order_by(ModelVersion.version))}


def test_a_retrained_model_keeps_its_bases_scale_resolution_head_and_decoder(tmp_path):
    project = _project(tmp_path, labelled=3)
    base = _checkpoint(tmp_path / "demo.pt", scale=1.0, mpp=0.62, instances={"min_size": 1007})
    register_model(project, base)
    # the app's first-model scale is 0.5 here: a retrain must not take it
    worker = Worker(project, tiny_worker(scale=0.5, warm_steps=2))
    job_id = worker.submit("train")
    worker.run_once()
    assert _job(project, job_id).status == "done", _job(project, job_id).message
    v2 = load_checkpoint(project.model_path(2))
    assert (v2.scale, v2.mpp, v2.instances, v2.model_config.head) == (1.0, 0.62, {"min_size": 1007}, "contour")
    assert v2.trained_on == [["img0", 1], ["img1", 1], ["img2", 1]]
    assert v2.train_config["scale"] == 1.0 and v2.train_config["round"]["warm"] is True
    # images at another resolution still import at the model's, after the retrain
    folder = tmp_path / "more"
    folder.mkdir()
    Image.fromarray(synthetic_sample(700, CFG)[0]).save(folder / "half.png")
    assert add_folder(project, folder, mpp=0.31) == 1
    assert _models(project) == {1: False, 2: True}
    assert np.array(Image.open(project.image_path("half"))).shape[:2] == (32, 32)  # 0.31 -> 0.62 µm/px


def test_a_worse_candidate_is_stored_not_activated_and_both_scores_are_shown(tmp_path, monkeypatch):
    project = _project(tmp_path, labelled=6)  # the fifth labelled image is held out
    register_model(project, _checkpoint(tmp_path / "good.pt", gland_bias=20.0, scale=1.0, mpp=0.62))

    def ruin(model, *args, **kwargs):  # "training" that makes the candidate see no gland anywhere
        with torch.no_grad():
            model.state_dict()[HEAD_BIAS][0] = -20.0

    monkeypatch.setattr(rounds, "fit", ruin)
    worker = Worker(project, tiny_worker(holdout=0.2))
    job_id = worker.submit("train")
    worker.run_once()
    message = _job(project, job_id).message
    assert _models(project) == {1: True, 2: False}, message
    assert "model v2 stored but not activated: worse than the active model on the 1 validation images" in message
    assert "IoU 0.000 vs " in message and "at best -" in message
    assert not project.prediction_path(2, "img0").exists()  # never served
    assert load_checkpoint(project.model_path(2)).trained_on == [[f"img{i}", 1] for i in (0, 1, 2, 3, 5)]

    token = create_user(project, "ana", admin=True)
    with TestClient(create_app(ServerConfig(str(project.root), retrain_every=0, worker=False))) as client:
        shown = {m["version"]: m for m in client.get("/api/models", headers={"Authorization": f"Bearer {token}"})
                 .json()}
    assert shown[1]["scores"]["iou"] > 0.1 and shown[2]["scores"]["iou"] == 0.0
    assert shown[1]["scores"]["images"] == shown[2]["scores"]["images"] == 1
    assert "worse than the active model" in shown[2]["note"]
    assert project.activate_model(2) and _models(project) == {1: False, 2: True}  # an admin still may


def test_a_retrain_with_too_few_labels_says_no_gate_was_applied(tmp_path):
    project = _project(tmp_path, labelled=3)
    worker = Worker(project, tiny_worker(first_steps=2, holdout=0.2))
    job_id = worker.submit("train")
    worker.run_once()
    message = _job(project, job_id).message
    assert _models(project) == {1: True}
    assert "no gate applied: 3 reviewed images: too few to hold one out (the first is held out at 5)" in message


def test_a_checkpoint_without_its_resolution_says_so_and_takes_model_mpp(tmp_path):
    project = _project(tmp_path, labelled=3)
    register_model(project, _checkpoint(tmp_path / "old.pt", scale=1.0))  # before µm/px was recorded
    folder = tmp_path / "more"
    folder.mkdir()
    Image.fromarray(synthetic_sample(700, CFG)[0]).save(folder / "a.png")
    with pytest.raises(PathosegError, match="say it with --model-mpp"):
        add_folder(project, folder, mpp=0.31)
    assert add_folder(project, folder, mpp=0.31, model_mpp=0.62) == 1
    worker = Worker(project, tiny_worker(warm_steps=1))
    first = worker.submit("train")
    worker.run_once()
    assert "does not record the µm/px it was trained at, so its retrains keep it unknown" in \
        _job(project, first).message
    second = worker.submit("train")
    worker.run_once()
    assert "µm/px" not in _job(project, second).message  # said once
    assert load_checkpoint(project.model_path(3)).mpp is None


def test_the_hold_out_is_every_fifth_image_per_grade_and_never_changes():
    def item(name, grade):
        return LabelledImage.of(name, 1, np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint16), grade)

    names = [item(f"b{i}", "benign") for i in range(7)] + [item(f"m{i}", "malignant") for i in range(5)]
    assert holdout(names, 0.2) == {"b4", "m4"}
    grown = names + [item(f"b{i}", "benign") for i in range(7, 10)]
    assert holdout(grown, 0.2) == {"b4", "b9", "m4"}  # earlier choices stay
    assert holdout(names[:4], 0.2) == set() and holdout(names, 0.0) == set()
    # pseudo-labels (saved unreviewed) never validate, and do not count toward the fifth
    unseen = [LabelledImage.of(f"p{i}", 1, names[0].load()[0], names[0].load()[1], "benign", reviewed=False)
              for i in range(5)]
    assert holdout(unseen + names, 0.2) == {"b4", "m4"}


@pytest.mark.slow
def test_the_study_through_the_app_labels_and_trains_as_the_study_in_process(tmp_path):
    from pathoseg.hitl.app_loop import AppStudyRunner

    data = write_synthetic(tmp_path / "data", n=16, seed=0, cfg=SyntheticConfig(size=(96, 128)))
    cfg = StudyConfig(strategies=[BUILTIN["hitl50"]], rounds=1, round=tiny_round(4, 3, holdout=0.2),
                      initial_fraction=0.4, test_limit=2, device="cpu")
    here = StudyRunner(data, cfg, tmp_path / "here").run()
    there = AppStudyRunner(StudyRunner(data, cfg, tmp_path / "app"), tmp_path / "app", tmp_path / "here").run()
    assert [r["same_weights_in_process"] for r in there] == [True, True]  # bit for bit the same models
    assert [r["selected"] for r in here] == [r["selected"] for r in there]
    assert [r["reviewed"] for r in here] == [r["reviewed"] for r in there]
    assert [r["test"] for r in here] == [r["test"] for r in there]
    assert [r["gate"] for r in here] == [r["gate"] for r in there]
    assert [r["validation"] for r in here] == [r["validation"] for r in there]
    assert here[1]["effort"]["seconds"] == pytest.approx(there[1]["effort"]["seconds"])
    assert here[1]["effort"]["seconds"] > 0
    # round 1's corrected instance maps: saved through the API = labelled in process
    project = tmp_path / "app" / "seed0" / "hitl50" / "project"
    for name in here[1]["selected"]:
        saved = np.array(Image.open(project / "masks" / name / "v1.png"))
        mine = read_target(tmp_path / "here" / "seed0" / "hitl50" / "round1" / "labels" / f"{name}.png")
        assert np.array_equal(saved, mine), name
    assert all("predictions refreshed" in r["job_message"] for r in there)


def test_the_gate_refuses_a_regression_the_validation_set_shows_not_one_image_of_noise():
    from pathoseg.engine.rounds import best_differences
    from pathoseg.engine.settings import GateConfig
    from pathoseg.metrics import ObjectTally
    from pathoseg.metrics.pixel import PixelCounts

    good = (PixelCounts(80, 10, 10), ObjectTally(tp=8, fp=1, fn=1))
    bad = (PixelCounts(60, 20, 20), ObjectTally(tp=6, fp=3, fn=3))
    gate = GateConfig()
    assert best_differences([bad] * 5, [good] * 5, gate)["iou"] < -gate.iou_tolerance  # worse on every image
    assert best_differences([good] * 4 + [bad], [good] * 5, gate) == {"iou": 0.0, "f1": 0.0}  # one image: noise
    assert best_differences([bad] * 5, [good] * 5, gate) == best_differences([bad] * 5, [good] * 5, gate)  # seeded
