"""Background work: retraining and prediction run in one worker thread, never in a request.

Every run makes a new model version that records which mask versions trained it and its
validation IoU; it becomes active only when it finished, and predictions are refreshed.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from sqlalchemy import func, select

from pathoseg.data.cache import ScaledPair, resize_image, resize_target, to_target
from pathoseg.data.images import read_image, write_label_png
from pathoseg.engine.checkpoint import Checkpoint, load_model
from pathoseg.engine.device import choose_device
from pathoseg.engine.instances import decode_instances
from pathoseg.engine.predict import PredictConfig, predict_maps
from pathoseg.engine.train import TrainConfig, fit, validate
from pathoseg.hitl.selection import mean_entropy
from pathoseg.models import ModelConfig, build_model
from pathoseg.server.config import TrainSettings
from pathoseg.server.project import current_labels
from pathoseg.server.storage import Image, Job, Mask, ModelVersion, Project, now

__all__ = ["TrainSettings", "Worker", "corrections_since_last_model", "fail_interrupted_jobs"]


class Worker:
    """One thread; jobs queue behind each other. ``wait`` is for tests and the CLI."""

    def __init__(self, project: Project, settings: TrainSettings | None = None) -> None:
        self.project = project
        self.settings = settings or TrainSettings()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pathoseg-worker")
        self.futures: dict[int, Future] = {}

    def submit(self, kind: str) -> int:
        with self.project.session() as s:
            job = Job(kind=kind)
            s.add(job)
            s.commit()
            job_id = job.id
        target: Callable[[int], None] = self._train if kind == "train" else self._predict_all
        self.futures[job_id] = self.pool.submit(self._run, job_id, target)
        return job_id

    def busy(self) -> bool:
        return any(not f.done() for f in self.futures.values())

    def wait(self, job_id: int, timeout: float | None = None) -> None:
        self.futures[job_id].result(timeout)

    def shutdown(self) -> None:
        """Drop the queued jobs (the next start marks them failed), wait for the running one."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- job bodies ----------------------------------------------------------------------
    def _update(self, job_id: int, **fields) -> None:
        with self.project.session() as s:
            job = s.get(Job, job_id)
            for k, v in fields.items():
                setattr(job, k, v)
            s.commit()

    def _run(self, job_id: int, body: Callable[[int], None]) -> None:
        self._update(job_id, status="running")
        try:
            body(job_id)
            self._update(job_id, status="done", progress=1.0, finished_at=now())
        except Exception as exc:  # a failed job is reported in the UI, never crashes the server
            traceback.print_exc()
            self._update(job_id, status="failed", message=f"{type(exc).__name__}: {exc}"[:500], finished_at=now())

    def _labelled(self) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
        """(name, mask version, image, training target) of every image with a saved mask; the
        target keeps the saved gland ids (older binary masks: their components)."""
        s = self.settings
        out = []
        with self.project.session() as session:
            for image in session.scalars(select(Image).where(Image.mask_version > 0).order_by(Image.name)):
                labels = current_labels(self.project, image)
                rgb = read_image(self.project.image_path(image.name))
                out.append((image.name, image.mask_version, resize_image(rgb, s.scale),
                            resize_target(to_target(labels), s.scale)))
        return out

    def _train(self, job_id: int) -> None:
        s = self.settings
        device = choose_device(s.device)
        labelled = self._labelled()
        if not labelled:
            raise ValueError("no corrected or imported masks to train on yet")
        pairs = [ScaledPair(n, img, tgt) for n, _, img, tgt in labelled]
        # Every fifth labelled image validates (when there are enough); else train on all.
        val = pairs[::5] if len(pairs) >= 5 else []
        train = [p for p in pairs if p not in val] if val else pairs
        with self.project.session() as session:
            active = self.project.active_model(session)
            version = (session.scalar(select(func.max(ModelVersion.version))) or 0) + 1
        if active is not None:
            model, ckpt = load_model(self.project.model_path(active.version), device)
            config = ckpt.model_config
        else:
            config = ModelConfig(s.preset)
            model = build_model(config)
        epochs = max(1, -(-s.steps * s.batch_size // max(1, len(train))))
        cfg = TrainConfig(model=config, epochs=epochs, batch_size=s.batch_size, crop=s.crop, scale=s.scale,
                          lr=1e-3 if active else 2e-3, progress=False)

        def progress(record, *_):
            self._update(job_id, progress=0.9 * record.epoch / epochs, message=f"epoch {record.epoch}/{epochs}")

        fit(model, train, [], cfg, device, on_epoch=progress)
        val_iou = validate(model, val or train, device)
        Checkpoint.of(model, s.scale, train_config=cfg.to_dict(),
                      metrics={"val_iou": val_iou}).save(self.project.model_path(version))
        with self.project.session() as session:
            for m in session.scalars(select(ModelVersion).where(ModelVersion.active)):
                m.active = False
            session.add(ModelVersion(version=version, val_iou=val_iou, active=True,
                                     trained_on=[[n, v] for n, v, _, _ in labelled]))
            session.commit()
        self._update(job_id, message=f"model v{version}: validation IoU {val_iou:.3f}; predicting")
        self._predict_all(job_id)

    def _predict_all(self, job_id: int) -> None:
        with self.project.session() as session:
            active = self.project.active_model(session)
            if active is None:
                raise ValueError("no model yet: correct a few images and retrain first")
            version = active.version
            names = [i.name for i in session.scalars(select(Image).order_by(Image.id))]
        device = choose_device(self.settings.device)
        model, ckpt = load_model(self.project.model_path(version), device)
        for k, name in enumerate(names):
            maps = predict_maps(model, read_image(self.project.image_path(name)), PredictConfig(scale=ckpt.scale),
                                device)
            probs = maps["gland"]
            write_label_png(self.project.prediction_path(version, name), np.round(probs * 255).astype(np.uint8))
            write_label_png(self.project.instances_path(version, name), decode_instances(maps, ckpt.instance_config()))
            with self.project.session() as session:
                image = session.scalars(select(Image).where(Image.name == name)).one()
                image.uncertainty = mean_entropy(probs)
                if image.status == "new":
                    image.status = "predicted"
                session.commit()
            self._update(job_id, progress=0.9 + 0.1 * (k + 1) / len(names))


def fail_interrupted_jobs(project: Project, keep: Collection[int] = ()) -> int:
    """Mark jobs left queued or running by a server that stopped as failed (except ``keep``:
    this process's own); returns how many."""
    with project.session() as s:
        stale = [j for j in s.scalars(select(Job).where(Job.status.in_(("queued", "running")))) if j.id not in keep]
        for j in stale:
            j.status, j.finished_at = "failed", now()
            j.message = "interrupted: the server stopped before this job finished; start it again"
        s.commit()
    return len(stale)


def corrections_since_last_model(project: Project) -> int:
    with project.session() as s:
        active = project.active_model(s)
        q = select(func.count(Mask.id)).where(Mask.source == "correction")
        if active is not None:
            q = q.where(Mask.created_at > active.created_at)
        return s.scalar(q) or 0
