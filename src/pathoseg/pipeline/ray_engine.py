"""``pathoseg predict --engine ray``: images and whole slides spread over a Ray cluster.

Each worker is a Ray actor that builds the model once, from the checkpoint the driver ships
(workers need no copy of the checkpoint file and download nothing), and predicts one input
at a time through the single-process functions (:func:`~pathoseg.pipeline.prediction.predict_files`,
:func:`~pathoseg.pipeline.prediction.predict_slides`), so every output is written exactly as
``--engine local`` writes it. Inputs are read and outputs written by the workers themselves:
on several machines the inputs and ``--out`` must be at the same path on all of them (shared
storage); on the local Ray (the default) that holds by itself.

The unit of work is one image or one whole slide, or, for slides split over the workers
(``--split-slides``; by default when there are fewer slides than workers), one window of a
slide: this process plans the windows the stitcher will need (``windows_to_compute``), the
workers compute their logits a bounded number ahead of it, and this process stitches, decodes
and writes the slide's outputs as one process would (:class:`RayWindows`).

Ray is optional (``pip install pathoseg[ray]``) and imported only here, when used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pathoseg.data.slides import Region, Slide
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.engine.instances import InstanceConfig
from pathoseg.engine.predict import PredictConfig
from pathoseg.engine.wsi.run import SlideConfig, SlideRun, WindowRead, window_logits
from pathoseg.errors import PathosegError
from pathoseg.models.heads import get_head
from pathoseg.pipeline.prediction import predict_slides

RAY_DEFAULT_PORT = 6379  # what `ray start --head` listens on


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide to run: ``--address``, ``--workers``, ``--cpus-per-worker``."""

    address: str | None = None  # None: a Ray of its own on this machine
    workers: int | None = None  # None: as many as the CPUs allow (cpus_per_worker each)
    cpus_per_worker: int = 1  # Ray CPUs reserved per actor, and its torch threads
    answer_timeout_s: float = 5.0  # an address that does not accept a connection by then is an error
    connect_timeout_s: float = 15.0  # the whole handshake with a cluster that did answer
    # True: each slide's windows over all workers, stitched here; False: each slide whole on
    # one worker; None: True when there are fewer slides than workers (some would be idle)
    split_slides: bool | None = None
    windows_ahead: int = 2  # per worker: windows computed ahead of the stitcher (bounds memory here)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise PathosegError(f"--workers {self.workers}: needs at least 1")
        if self.cpus_per_worker < 1:
            raise PathosegError(f"--cpus-per-worker {self.cpus_per_worker}: needs at least 1")
        if self.windows_ahead < 1:
            raise PathosegError(f"windows_ahead {self.windows_ahead}: needs at least 1")

    def splits(self, slides: int, workers: int) -> bool:
        """Whether ``slides`` slides on ``workers`` workers are split into windows."""
        return self.split_slides if self.split_slides is not None else 0 < slides < workers


@dataclass(frozen=True)
class PredictJob:
    """Everything a worker needs, besides the model, to predict as the single-process path
    does; ``cmd_predict`` makes it from the same settings it gives that path."""

    out: Path
    device: str | None  # --device, resolved on each worker's own machine
    image_config: PredictConfig
    image_instances: InstanceConfig
    slide_instances: InstanceConfig = field(default_factory=InstanceConfig)
    slide_config: SlideConfig | None = None  # None: the default (slide_config)
    slide_mpp: float | None = None  # --mpp
    model_mpp: float | None = None
    scale: float = 1.0  # the checkpoint's working scale
    identity: dict | None = None  # joins the settings a resumed slide must share
    input_mpps: Mapping[Path, float] | None = None  # µm/px per plain image (--mpp auto), estimated on the driver
    slide_mpps: Mapping[Path, float] | None = None  # µm/px per slide as the driver found it (metadata, --mpp, auto)

    def open_slide(self, path: Path) -> Slide:
        """A slide at the resolution the driver found for it (a worker need not estimate again;
        a slide without metadata has no other)."""
        return Slide(path, (self.slide_mpps or {}).get(Path(path).absolute(), self.slide_mpp))


@dataclass(frozen=True)
class WorkItem:
    """One input: an image (``region`` None) or a slide's region (level-0 pixels)."""

    index: int
    path: Path
    region: Region | None = None


class PredictWorker:
    """The body of a Ray actor: one model, built once, then one input per call."""

    def __init__(self, checkpoint: Checkpoint, job: PredictJob, threads: int) -> None:
        import torch

        from pathoseg.engine.device import choose_device

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, no more
        self.job = job
        self.device = choose_device(job.device)
        self.model = checkpoint.build(self.device).eval()
        self.slide: Slide | None = None  # the slide whose windows it computes, kept open

    def predict(self, item: WorkItem) -> tuple[int, Path | SlideRun]:
        """(item index, the mask written for an image | the SlideRun of a slide)."""
        from pathoseg.pipeline.prediction import predict_files, predict_slides

        job = self.job
        if item.region is None:
            written = predict_files(self.model, [item.path], job.out, job.image_config, job.image_instances,
                                    self.device, progress=False, input_mpps=job.input_mpps, model_mpp=job.model_mpp)
            return item.index, written[0]
        slide = job.open_slide(item.path)
        runs = predict_slides(self.model, [(slide, item.region)], job.out / "slides", job.model_mpp, job.scale,
                              job.slide_instances, self.device, job.slide_config, job.identity, progress=False)
        return item.index, runs[0]

    def window_logits(self, path: Path, read: WindowRead, tta: bool) -> np.ndarray:
        """One window of the slide at ``path`` (:func:`~pathoseg.engine.wsi.run.window_logits`)."""
        if self.slide is None or self.slide.path != path:
            if self.slide is not None:
                self.slide.close()
            self.slide = self.job.open_slide(path)
        return window_logits(self.model, self.slide, read, tta, self.device)


@dataclass
class RayWindows:
    """A slide's windows over Ray actors (a :class:`~pathoseg.engine.wsi.run.WindowSource`):
    submitted round-robin in the stitcher's order, at most ``ahead`` not yet taken, so memory
    here stays bounded whatever the slide's size; a worker's error is one line."""

    ray: Any
    actors: list
    channels: tuple[str, ...]
    ahead: int

    def logits(self, slide, reads: Sequence[WindowRead], tta: bool) -> Iterator[np.ndarray]:
        path = slide.path.absolute()  # the workers open it themselves (shared storage)
        pending: deque = deque()
        submitted = 0
        try:
            for taken in range(len(reads)):
                while submitted < min(len(reads), taken + self.ahead):
                    actor = self.actors[submitted % len(self.actors)]
                    pending.append(actor.window_logits.remote(path, reads[submitted], tta))
                    submitted += 1
                logits = _get(self.ray, pending.popleft())
                yield logits
        finally:  # stopped early (an error, a stop): what is queued is not needed
            for ref in pending:
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)


def _get(ray, ref):
    """``ray.get`` with a worker's input error as the one line it is."""
    with _worker_errors(ray):
        return ray.get(ref)


@contextlib.contextmanager
def _worker_errors(ray) -> Iterator[None]:
    """A worker's input error as the one line the CLI prints; anything else as it is."""
    try:
        yield
    except Exception as exc:
        error = _unwrap(ray, exc)
        if error is None:
            raise
        raise error from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PathosegError("--engine ray needs Ray, which is not installed: pip install 'pathoseg[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``ray://HOST:PORT`` -> (host, port); the port defaults to Ray's 6379."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, RAY_DEFAULT_PORT
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise PathosegError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)") from None


def check_answers(address: str, timeout_s: float) -> None:
    """A one-line error, after at most ``timeout_s``, when nothing accepts a connection at
    ``address`` (Ray's own connect retries for minutes)."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        why = f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError) else (
            (exc.strerror or type(exc).__name__).lower())
        raise PathosegError(f"Ray cluster at {address} does not answer ({why}); start one with 'ray start --head' "
                            "there, or leave out --address for a local Ray") from None


def _connect(ray, address: str, timeout_s: float) -> None:
    """``ray.init(address)`` bounded by ``timeout_s``: the handshake runs in a daemon thread
    (it starts no processes, so nothing is tied to that thread's life) and is abandoned when
    it has not finished by then."""
    outcome: dict[str, BaseException | None] = {}

    def connect() -> None:
        try:
            # ERROR: Ray warns that a thread other than the main one cannot set its SIGTERM handler
            ray.init(address=address, logging_level=logging.ERROR)
            outcome["error"] = None
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if "error" not in outcome:
        raise PathosegError(f"Ray cluster at {address} answers but did not let this driver connect within "
                            f"{timeout_s:g} s (is it Ray {ray.__version__}? a cluster with token authentication "
                            "needs its token here: RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    if outcome["error"] is not None:
        first = (str(outcome["error"]).strip().splitlines() or [type(outcome["error"]).__name__])[0]
        raise PathosegError(f"Ray cluster at {address}: {first}")


def check_ray(cfg: RayConfig) -> None:
    """What can be known before any work: Ray is installed, and ``cfg.address`` answers."""
    _import_ray()
    if cfg.address is not None:
        check_answers(cfg.address, cfg.answer_timeout_s)


def start_ray(cfg: RayConfig) -> bool:
    """Connect to ``cfg.address`` or start a local Ray; True when this call did, and so
    :func:`stop_ray` must undo it. A Ray this process already runs (the caller's own
    ``ray.init``) is used as it is, once a given address has answered."""
    ray = _import_ray()
    if cfg.address is not None:
        check_answers(cfg.address, cfg.answer_timeout_s)
    if ray.is_initialized():
        return False
    if cfg.address is None:
        workers = cfg.workers or max(1, (os.cpu_count() or 1) // cfg.cpus_per_worker)
        # Processes of a local Ray die with the thread that started them: start it here.
        ray.init(num_cpus=workers * cfg.cpus_per_worker, include_dashboard=False, logging_level=logging.WARNING)
    else:
        _connect(ray, cfg.address, cfg.connect_timeout_s)
    return True


def stop_ray() -> None:
    """Disconnect (a cluster keeps running) or stop the local Ray."""
    _import_ray().shutdown()


def _worker_count(ray, cfg: RayConfig) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cfg.workers is None:
        return max(1, cpus // cfg.cpus_per_worker)
    if cfg.workers * cfg.cpus_per_worker > cpus:
        raise PathosegError(f"--workers {cfg.workers} x --cpus-per-worker {cfg.cpus_per_worker} needs "
                            f"{cfg.workers * cfg.cpus_per_worker} CPUs; the Ray cluster has {cpus}")
    return cfg.workers


def _work_items(images: Sequence[Path], slides: Sequence[tuple[Path, Region]]) -> list[WorkItem]:
    """Slides first, largest first, then images: the long items start early, the short ones
    fill the gaps at the end. Paths are absolute: a worker may run in another folder."""
    items = [WorkItem(k, Path(p).absolute(), r) for k, (p, r) in enumerate(slides)]
    items.sort(key=lambda item: -item.region.w * item.region.h)
    return items + [WorkItem(len(slides) + k, Path(p).absolute()) for k, p in enumerate(images)]


def _absolute(job: PredictJob) -> PredictJob:
    """``job`` with its paths absolute, as :func:`_work_items` makes the inputs'."""
    def absolute(mpps: Mapping[Path, float] | None) -> dict[Path, float] | None:
        return {Path(p).absolute(): v for p, v in mpps.items()} if mpps is not None else None

    return replace(job, out=job.out.absolute(), input_mpps=absolute(job.input_mpps),
                   slide_mpps=absolute(job.slide_mpps))


def _unwrap(ray, exc: Exception) -> PathosegError | None:
    """A worker's error as the one line the CLI prints (None: a bug, shown in full)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, PathosegError):
        return PathosegError(str(exc.cause))
    if isinstance(exc, ray.exceptions.RayActorError):
        first = (str(exc).strip().splitlines() or [""])[0]
        return PathosegError(f"a Ray worker died or could not start ({first[:200]}); every machine needs "
                             "pathoseg installed in the same Python environment as this one")
    return None


def predict_on_ray(checkpoint: Checkpoint, images: Sequence[Path], slides: Sequence[tuple[Path, Region]],
                   job: PredictJob, cfg: RayConfig, progress: bool = True) -> tuple[list[Path], list[SlideRun]]:
    """Predict ``images`` and ``slides`` ((path, region) pairs, already checked) on Ray
    actors into ``job.out``; (masks written, one SlideRun per slide), both in input order."""
    ray = _import_ray()

    started = start_ray(cfg)
    actors = []
    try:
        available = _worker_count(ray, cfg)
        split = cfg.splits(len(slides), available)
        workers = available if split else min(available, max(1, len(images) + len(slides)))
        # Only what predicting needs travels: no optimiser state, no training history.
        model_ref = ray.put(replace(checkpoint, optimizer=None, scheduler=None, history=[]))
        actor_class = ray.remote(num_cpus=cfg.cpus_per_worker)(PredictWorker)
        job = _absolute(job)
        job_ref = ray.put(job)
        actors = [actor_class.remote(model_ref, job_ref, cfg.cpus_per_worker) for _ in range(workers)]
        if not split:
            return _inputs_on_actors(ray, actors, images, slides, progress)
        windows = RayWindows(ray, actors, get_head(checkpoint.model_config.head).channels,
                             cfg.windows_ahead * workers)
        opened = [(job.open_slide(path), region) for path, region in slides]
        runs = predict_slides(None, opened, job.out / "slides", job.model_mpp, job.scale, job.slide_instances,
                              "cpu", job.slide_config, job.identity, progress, windows=windows)
        masks, _ = _inputs_on_actors(ray, actors, images, [], progress)
        return masks, runs
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            stop_ray()


def _inputs_on_actors(ray, actors: list, images: Sequence[Path], slides: Sequence[tuple[Path, Region]],
                      progress: bool) -> tuple[list[Path], list[SlideRun]]:
    """Whole inputs, one per call, to whichever actor is free; results in input order."""
    from ray.util import ActorPool

    pool = ActorPool(actors)
    items = _work_items(images, slides)
    for item in items:
        pool.submit(lambda actor, it: actor.predict.remote(it), item)
    results: list = [None] * len(items)
    with tqdm(total=len(items), desc=f"predicting on {len(actors)} Ray workers", unit="input",
              disable=not progress or not items, leave=False) as bar:
        while pool.has_next():
            with _worker_errors(ray):
                index, result = pool.get_next_unordered()
            results[index] = result
            bar.update(1)
    return list(results[len(slides):]), list(results[:len(slides)])
