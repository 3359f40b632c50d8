"""The HITL study through the real app (``pathoseg hitl --via-app``).

Per seed and strategy: a temporary project (SQLite), a real ``pathoseg serve`` (no worker
thread) and a ``pathoseg worker`` process, both with the study's round settings. The study's
pool images are added with ``pathoseg project add``; every label goes in through the HTTP API
(``PUT /api/images/{id}/mask`` with the simulated pathologist's seconds and operation log),
every retrain is a ``POST /api/train`` job waited for, and every round is planned from the
predictions and uncertainties the API serves. Only the test on the held-out test set is the
study's own (the active model's file, read from the project folder). Same protocol, seeds and
records as :class:`pathoseg.hitl.study.StudyRunner`, so the two compare one to one.

Layout of ``out``: ``seed<k>/<strategy>/{project/, server.log, worker.log,
round<r>/{plan.json, record.json}}``, and ``seed<k>/round0/``: the first strategy's folder
right after round 0, which the others copy. A round with a ``record.json`` is done; a round
interrupted midway resumes from its ``plan.json`` and the project's state.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

from pathoseg.engine.checkpoint import Checkpoint, load_checkpoint
from pathoseg.engine.rounds import ReviewMaps
from pathoseg.errors import PathosegError
from pathoseg.hitl.annotator import Effort
from pathoseg.hitl.strategies import Strategy, make_label
from pathoseg.hitl.study import (
    Pool,
    StudyRunner,
    label_quality,
    make_pool,
    plan_batch,
    round_rng,
    round_size,
    subset_test,
)
from pathoseg.io import write_json


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _read_png(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def operation_log(effort: Effort) -> list[dict]:
    """The editor's log of a simulated correction: one entry per operation, stamped now."""
    stamp = datetime.now(UTC).isoformat()
    return [{"type": kind, "timestamp": stamp} for kind, n in sorted(effort.operations.items()) for _ in range(n)]


class AppClient:
    """The parts of the HTTP API a pathologist's editor uses, as a client."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def _ok(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise PathosegError(f"the app answered {response.status_code}: {response.text[:300]}",
                                str(response.request.url))
        return response

    def images(self) -> dict[str, dict]:
        return {i["name"]: i for i in self._ok(self.http.get("/api/images", params={"order": "name"})).json()}

    def review_maps(self, image: dict) -> ReviewMaps:
        probs = _read_png(self._ok(self.http.get(f"/api/images/{image['id']}/prediction.png")).content)
        glands = _read_png(self._ok(self.http.get(f"/api/images/{image['id']}/instances.png")).content)
        return ReviewMaps(probs.astype(np.uint8), glands.astype(np.int32), probs.astype(np.float32) / 255)

    def save(self, image: dict, labels: np.ndarray, effort: Effort) -> dict:
        body = {"png_base64": base64.b64encode(_png(labels.astype(np.uint16))).decode(), "kind": "labels",
                "base_version": image["mask_version"], "seconds": effort.seconds, "operations": operation_log(effort),
                "approve": True}
        return self._ok(self.http.put(f"/api/images/{image['id']}/mask", json=body)).json()

    def mask(self, image: dict) -> np.ndarray:
        return _read_png(self._ok(self.http.get(f"/api/images/{image['id']}/mask.png")).content)

    def retrain(self, timeout: float = 3600) -> dict:
        job = self._ok(self.http.post("/api/train")).json()
        deadline = time.monotonic() + timeout
        while job["status"] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise PathosegError(f"retrain job {job['id']} still {job['status']} after {timeout:.0f} s")
            time.sleep(0.5)
            job = self._ok(self.http.get(f"/api/jobs/{job['id']}")).json()
        if job["status"] == "failed":
            raise PathosegError(f"the app's retrain failed: {job['message']}")
        return job

    def models(self) -> list[dict]:
        return self._ok(self.http.get("/api/models")).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def round_args(runner: StudyRunner) -> list[str]:
    """``pathoseg serve`` / ``worker`` options for the study's round (every one it sets)."""
    r = runner.cfg.round
    t = r.train
    if r.retrain != "warm":
        raise PathosegError("the app retrains warm-started; --retrain scratch has no app equivalent")
    return ["--steps", str(r.first_steps), "--warm-steps", str(r.warm.steps), "--warm-lr-scale",
            str(r.warm.lr_scale), "--freeze-stages", str(r.warm.freeze_stages), "--warm-crop",
            str(r.warm.crop or t.crop), "--batch-size", str(t.batch_size),
            "--crop", str(t.crop), "--scale", str(t.scale), "--preset", t.model.preset, "--holdout",
            str(r.gate.holdout), "--seed", str(r.seed),
            *(["--device", runner.cfg.device] if runner.cfg.device else [])]


class AppSession:
    """A project with a running server and worker, for one seed and strategy."""

    def __init__(self, runner: StudyRunner, pool: Pool, folder: Path, seed: int) -> None:
        self.folder = folder
        self.project = folder / "project"
        self.procs: list[subprocess.Popen] = []
        exe = [sys.executable, "-m", "pathoseg"]
        if not (self.project / "pathoseg.db").is_file():
            self._stage_pool(runner, pool)
            subprocess.run([*exe, "project", "init", str(self.project)], check=True, capture_output=True)
            subprocess.run([*exe, "project", "add", str(self.project), str(folder / "pool")], check=True,
                           capture_output=True)
        token_file = folder / "token"
        if not token_file.is_file():
            out = subprocess.run([*exe, "project", "users", "add", str(self.project), "study", "--admin"], check=True,
                                 capture_output=True, text=True).stdout
            token_file.write_text(out.strip().rsplit(" ", 1)[-1])
        port = _free_port()
        settings = round_args(runner)
        settings[settings.index("--seed") + 1] = str(seed)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.procs.append(subprocess.Popen([*exe, "serve", "--project", str(self.project), "--port", str(port),
                                            "--no-worker", "--retrain-every", "0", *settings],
                                           stdout=(folder / "server.log").open("a"), stderr=subprocess.STDOUT, env=env))
        self.procs.append(subprocess.Popen([*exe, "worker", "--project", str(self.project), "--poll", "0.5",
                                            *settings], stdout=(folder / "worker.log").open("a"),
                                           stderr=subprocess.STDOUT, env=env))
        self.client = AppClient(f"http://127.0.0.1:{port}", token_file.read_text().strip())
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.images()
                break
            except (httpx.HTTPError, PathosegError):
                if time.monotonic() > deadline or self.procs[0].poll() is not None:
                    self.close()
                    raise PathosegError("the app did not start; see server.log", folder) from None
                time.sleep(0.5)

    def _stage_pool(self, runner: StudyRunner, pool: Pool) -> None:
        """The pool's images (no masks: every label goes in through the API), with their grades."""
        staged = self.folder / "pool"
        shutil.rmtree(staged, ignore_errors=True)
        (staged / "images").mkdir(parents=True)
        for name in [*pool.initial, *pool.pool]:
            Image.fromarray(pool.pixels[name][0]).save(staged / "images" / f"{name}.png")
        grades = [(n, g) for n, g in pool.grades.items() if g]
        if grades:
            (staged / "Grade.csv").write_text("name,grade\n" + "".join(f"{n},{g}\n" for n, g in grades))

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def weights_digest(ckpt: Checkpoint) -> str:
    """A model's weights, as one hash: two models with the same digest predict the same."""
    h = hashlib.sha256()
    for name in sorted(ckpt.state_dict):
        h.update(name.encode())
        h.update(ckpt.state_dict[name].numpy().tobytes())
    return h.hexdigest()[:16]


def in_process_active(reference: Path, seed: int, strategy: str, r: int) -> tuple[Path, dict] | None:
    """The in-process study's active model after round ``r`` (the last candidate its gate let
    through) and that round's record; None when that study has not run the round."""
    strategy_dir = reference / f"seed{seed}" / strategy
    record_file = (strategy_dir / f"round{r}" if r else reference / f"seed{seed}" / "round0") / "record.json"
    if not record_file.is_file():
        return None
    for k in range(r, 0, -1):
        if json.loads((strategy_dir / f"round{k}" / "record.json").read_text())["activated"]:
            return strategy_dir / f"round{k}" / "model.pt", json.loads(record_file.read_text())
    return reference / f"seed{seed}" / "round0" / "model.pt", json.loads(record_file.read_text())


class AppStudyRunner:
    """:class:`StudyRunner`'s protocol, every label and retrain through the app. ``reference``:
    the same study run in process; each round says whether the app's active model has the
    same weights as the in-process one, and where they are the same, takes its test scores
    from there (the same weights score the same) instead of testing again."""

    def __init__(self, runner: StudyRunner, out: Path, reference: Path | None = None) -> None:
        self.runner = runner
        self.out = out
        self.reference = reference

    def _test(self, session: AppSession, test_split, seed: int, strategy: str, r: int) -> dict:
        """The active model's test scores, and whether it is the in-process study's model."""
        active = next(m for m in session.client.models() if m["active"])
        ckpt = load_checkpoint(session.project / "models" / f"v{active['version']}.pt")
        digest = weights_digest(ckpt)
        found = in_process_active(self.reference, seed, strategy, r) if self.reference else None
        if found is not None and weights_digest(load_checkpoint(found[0])) == digest:
            return {"test": found[1]["test"], "weights": digest, "same_weights_in_process": True}
        return {"test": self.runner.score_test(ckpt, test_split), "weights": digest,
                "same_weights_in_process": False if found is not None else None}

    def _retrain(self, session: AppSession, r: int, test_split, seed: int, strategy: str) -> dict:
        models = session.client.models()
        start = time.perf_counter()
        job = session.client.retrain() if len(models) <= r else None  # else: trained before an interruption
        wall = time.perf_counter() - start
        models = session.client.models()
        made = models[r]  # round r makes version r + 1
        ckpt = load_checkpoint(session.project / "models" / f"v{made['version']}.pt")
        return {**self._test(session, test_split, seed, strategy, r), "train_s": ckpt.metrics.get("train_s"),
                "gate_s": ckpt.metrics.get("gate_s"),
                "round_s": ckpt.metrics.get("train_s", 0.0) + ckpt.metrics.get("gate_s", 0.0),
                "activated": made["active"], "gate": made["note"], "validation": ckpt.train_config.get("validation"),
                "app_round_s": wall if job else None,
                "job_message": job["message"] if job else None}

    def run_strategy(self, pool: Pool, strategy: Strategy, seed: int, test_split, bar: tqdm) -> list[dict]:
        """The strategy's rounds in a project of its own. Round 0 is the same for every strategy
        of a seed: the first one's project right after it is kept (``seed<k>/round0/``) and the
        others start from a copy, as a lab copies a project, instead of training it again."""
        folder = self.out / f"seed{seed}" / strategy.name
        shared = self.out / f"seed{seed}" / "round0"
        if not (folder / "project").exists() and (shared / "round0" / "record.json").is_file():
            shutil.copytree(shared, folder)
        folder.mkdir(parents=True, exist_ok=True)
        session = AppSession(self.runner, pool, folder, seed)
        records = []
        try:
            for r in range(self.runner.cfg.rounds + 1):
                rdir = folder / f"round{r}"
                if (rdir / "record.json").is_file():
                    record = json.loads((rdir / "record.json").read_text())
                else:
                    record = self._round(session, pool, strategy, seed, r, rdir, test_split)
                if r == 0 and not shared.exists():
                    shutil.copytree(folder, shared.with_suffix(".tmp"), dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("*.log", "pool"))
                    shared.with_suffix(".tmp").rename(shared)
                records.append(record)
                bar.update(1)
        finally:
            session.close()
        return records

    def _round(self, session: AppSession, pool: Pool, strategy: Strategy, seed: int, r: int, rdir: Path,
               test_split) -> dict:
        cfg, annotator = self.runner.cfg, self.runner.annotator
        images = session.client.images()
        labelled = {n for n, i in images.items() if i["mask_version"] > 0}
        plan_file = rdir / "plan.json"
        if plan_file.is_file():
            plan = json.loads(plan_file.read_text())
        elif r == 0:
            plan = {"batch": list(pool.initial), "reviewed": list(pool.initial), "predict_s": 0.0}
        else:
            remaining = [n for n in pool.pool if n not in labelled]
            start = time.perf_counter()
            maps = {n: session.client.review_maps(images[n]) for n in remaining}
            predict_s = time.perf_counter() - start
            batch, reviewed = plan_batch(remaining, maps, strategy, cfg.selection,
                                         round_size(pool, cfg.rounds, r, len(remaining)), round_rng(seed, strategy, r),
                                         uncertainty={n: images[n]["uncertainty"] for n in remaining})
            plan = {"batch": batch, "reviewed": sorted(reviewed), "predict_s": predict_s}
            write_json(plan_file, plan)
        effort = Effort()
        for name in sorted(plan["batch"]):  # in name order, as the in-process study labels them
            gt = pool.pixels[name][1]
            if r == 0:
                target, cost = gt.astype(np.uint16), annotator.draw_from_scratch(gt)
            else:
                maps = session.client.review_maps(images[name])
                target, cost = make_label(strategy, name in plan["reviewed"], maps, gt, annotator)
            effort = effort + cost
            if name not in labelled:
                session.client.save(images[name], target, cost)
        trained = self._retrain(session, r, test_split, seed, strategy.name)
        saved = {n: session.client.mask(i) for n, i in session.client.images().items() if i["mask_version"] > 0}
        record = {"seed": seed, "round": r, "strategy": strategy.name if r else "initial", **trained,
                  "label_iou": label_quality(saved, pool), "effort": asdict(effort), "predict_s": plan["predict_s"],
                  "selected": plan["batch"], "reviewed": plan["reviewed"]}
        write_json(rdir / "record.json", record)
        return record

    def run(self) -> list[dict]:
        cfg = self.runner.cfg
        records = []
        bar = tqdm(total=cfg.seeds * len(cfg.strategies) * (cfg.rounds + 1), desc="HITL study via the app",
                   unit="round", dynamic_ncols=True)
        plan = self.runner.plan
        for seed in range(cfg.seeds):
            pool = make_pool(plan.data, plan.split, cfg.initial_fraction, seed)
            test_split = subset_test(plan.split, cfg.test_limit)
            for k, strategy in enumerate(cfg.strategies):
                found = self.run_strategy(pool, strategy, seed, test_split, bar)
                records += found if k == 0 else found[1:]  # round 0 once per seed, as the in-process study
        bar.close()
        return records
