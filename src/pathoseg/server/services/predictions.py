"""Predictions: the active model's review maps for the images it has not predicted yet, every
image's uncertainty (the queue's order), and which images are waiting for a prediction.

A prediction job predicts only the images without both files of the model version
(``predictions/v<k>/<name>.png`` and ``instances/<name>.png``): so the job an upload queues
costs that one image, not the whole project. An image whose stored uncertainty came from
another version gets it recomputed from that version's stored probability bytes, so
activating an older version reorders the queue without predicting anything again; the
others are left as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import select

from pathoseg.data.images import open_image, read_image, write_label_png
from pathoseg.engine.backends import BackendConfig, load_backend
from pathoseg.engine.device import choose_device
from pathoseg.engine.rounds import review_maps
from pathoseg.metrics.uncertainty import mean_entropy_banded
from pathoseg.server.config import WorkerSettings
from pathoseg.server.storage import Image, Job, Project

BUSY = ("queued", "running")


def has_prediction(project: Project, version: int, name: str) -> bool:
    """Whether model ``version`` predicted image ``name`` (both files are written atomically,
    the glands last)."""
    return project.prediction_path(version, name).is_file() and project.instances_path(version, name).is_file()


def stored_uncertainty(project: Project, version: int, name: str) -> float:
    """The uncertainty of a stored prediction, from its probability x 255."""
    path = project.prediction_path(version, name)
    return mean_entropy_banded(np.asarray(open_image(path, path)))


def predict_images(project: Project, version: int, model_file: Path, settings: WorkerSettings,
                   progress: Callable[[float], None]) -> int:
    """Review maps (:func:`pathoseg.engine.rounds.review_maps`, the same the HITL study plans
    from) of model ``version`` for every image it has not predicted, the uncertainty of every
    image; returns how many were predicted. ``progress(fraction)`` after each image (it may
    raise to stop the job). The model is loaded only when an image needs it."""
    with project.session() as session:
        images = [(i.name, i.uncertainty_version) for i in session.scalars(select(Image).order_by(Image.id))]
    model = None
    predicted = 0
    for k, (name, scored_by) in enumerate(images):
        if has_prediction(project, version, name):
            if scored_by == version:
                progress((k + 1) / len(images))
                continue
            uncertainty = stored_uncertainty(project, version, name)
        else:
            if model is None:
                device = choose_device(settings.device)
                model, ckpt = load_backend(model_file, BackendConfig(settings.predict_backend), device)
            maps = review_maps(model, ckpt, read_image(project.image_path(name)), device)
            write_label_png(project.prediction_path(version, name), maps.probs)
            write_label_png(project.instances_path(version, name), maps.glands)
            uncertainty = maps.uncertainty
            predicted += 1
        with project.session() as session:
            image = session.scalars(select(Image).where(Image.name == name)).one()
            image.uncertainty, image.uncertainty_version = uncertainty, version
            if image.status == "new":
                image.status = "predicted"
            session.commit()
        progress((k + 1) / len(images))
    return predicted


def predicting(project: Project, images: Sequence[Image]) -> list[bool]:
    """Per image: waiting for its prediction (no prediction of the active model while a
    prediction or retrain job is queued or running), so the editor can say so."""
    with project.session() as session:
        active = project.active_model(session)
        busy = session.scalars(select(Job.id).where(Job.status.in_(BUSY)).limit(1)).first() is not None
    if not busy:
        return [False] * len(images)
    return [active is None or not has_prediction(project, active.version, i.name) for i in images]
