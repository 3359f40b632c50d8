"""The correction app under load: N simulated annotators against a real ``pathoseg serve``.

    python bench/load_test.py [--annotators 20] [--seconds 120] [--images 12] [--db URL]

Makes a throwaway project (synthetic images, half of them with an imported mask; SQLite in
the project unless ``--db`` names a PostgreSQL database), one annotator user per thread, and
starts ``pathoseg serve`` on 127.0.0.1 in a process of its own (automatic retraining off, so
the run measures the API, not training). Each annotator loops until the time is up (or
``--max-rounds``): list the queue, pick one of its first few images (so that annotators
collide), read the image's record, the image and the current mask, think briefly, and save a
mask of its own drawing with the version it read as base. A save that lost the race gets 409,
which is expected; every other answer must be 2xx.

Checked at the end, from the answers and from the project's mask files:

- no 5xx and no other unexpected status, no failed request;
- no lost update: every save answered 200 got a version of its own (no two share one), the
  file stored under that version holds exactly the mask that save sent, and per image the
  versions saved form a contiguous run ending at the image's final ``mask_version``.

Prints requests, p50/p95/max latency per endpoint and the checks; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.services.images import add_image
from pathoseg.server.storage import Project, add_user

ENDPOINTS = ("list", "info", "image", "mask", "save")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_base64(mask: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def drawing(shape: tuple[int, int], who: int, k: int) -> np.ndarray:
    """A mask no other save draws: rectangles placed by annotator and round."""
    rng = np.random.default_rng([who, k])
    mask = np.zeros(shape, bool)
    h, w = shape
    for _ in range(3):
        r, c = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
        mask[r:r + int(rng.integers(6, 40)), c:c + int(rng.integers(6, 40))] = True
    return mask


@dataclass
class Save:
    image_id: int
    version: int
    who: str
    mask: np.ndarray


@dataclass
class Tally:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    failures: list[str] = field(default_factory=list)  # exceptions and unexpected statuses
    saves: list[Save] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, endpoint: str, seconds: float, status: int) -> None:
        with self.lock:
            self.latency[endpoint].append(seconds)
            self.statuses[(endpoint, status)] += 1


def make_project(folder: Path, db: str | None, n_images: int, n_annotators: int,
                 size: tuple[int, int]) -> tuple[dict[str, str], set[str]]:
    """Images (every other one with an imported mask, version 1), one token per annotator and
    an admin's; the tokens and the names of the images imported with a mask."""
    project = Project(folder, db, create=True)
    imported = set()
    for i in range(n_images):
        image, labels = synthetic_sample(500 + i, SyntheticConfig(size=size))
        add_image(project, f"img{i:03d}", image, labels if i % 2 else None)
        if i % 2:
            imported.add(f"img{i:03d}")
    tokens = {f"ann{k:02d}": add_user(project, f"ann{k:02d}").token for k in range(n_annotators)}
    tokens["admin"] = add_user(project, "admin", "admin").token
    project.engine.dispose()
    return tokens, imported


def start_server(folder: Path, db: str | None, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pathoseg.cli", "serve", "--project", str(folder), "--host", "127.0.0.1",
           "--port", str(port), "--retrain-every", "0"]
    if db:
        cmd += ["--db", db]
    with log.open("w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(base: str, token: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"pathoseg serve exited with {proc.returncode} before it answered")
        try:
            if httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"pathoseg serve did not answer within {timeout:.0f} s")


def annotator(k: int, name: str, token: str, base: str, stop_at: float, max_rounds: int, think: float,
              tally: Tally) -> None:
    rng = random.Random(k)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:

        def call(endpoint: str, method: str, url: str, expected: tuple[int, ...] = (200,),
                 **kw) -> httpx.Response | None:
            start = time.perf_counter()
            try:
                r = client.request(method, url, **kw)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.failures.append(f"{name} {method} {url}: {type(exc).__name__}: {exc}")
                return None
            tally.record(endpoint, time.perf_counter() - start, r.status_code)
            if r.status_code not in expected:
                with tally.lock:
                    tally.failures.append(f"{name} {method} {url}: {r.status_code} {r.text[:200]}")
                return None
            return r

        for round_ in range(max_rounds):
            if time.monotonic() >= stop_at:
                return
            queue = call("list", "GET", "/api/images", params={"order": rng.choice(["uncertainty", "random"])})
            if queue is None or not queue.json():
                continue
            picked = rng.choice(queue.json()[:4])
            info = call("info", "GET", f"/api/images/{picked['id']}")
            if info is None:
                continue
            base_version, shape = info.json()["mask_version"], (info.json()["height"], info.json()["width"])
            if call("image", "GET", f"/api/images/{picked['id']}/image.png") is None:
                continue
            if call("mask", "GET", f"/api/images/{picked['id']}/mask.png") is None:
                continue
            time.sleep(rng.uniform(0, think))  # the correction itself
            mask = drawing(shape, k, round_)
            body = {"png_base64": png_base64(mask), "base_version": base_version,
                    "seconds": round(rng.uniform(5, 60), 1), "operations": {"brush": rng.randint(1, 5)}}
            saved = call("save", "PUT", f"/api/images/{picked['id']}/mask", expected=(200, 409), json=body)
            if saved is not None and saved.status_code == 200:
                with tally.lock:
                    tally.saves.append(Save(picked["id"], saved.json()["mask_version"], name, mask))


def check(tally: Tally, folder: Path, base: str, admin_token: str, imported: set[str]) -> list[str]:
    """The lost-update and version checks; the problems found (empty: all good)."""
    problems = []
    images = {i["id"]: i for i in httpx.get(f"{base}/api/images", params={"order": "name"}, timeout=60,
                                            headers={"Authorization": f"Bearer {admin_token}"}).json()}
    by_image: dict[int, list[Save]] = defaultdict(list)
    for s in tally.saves:
        by_image[s.image_id].append(s)
    for image_id, saves in sorted(by_image.items()):
        image = images[image_id]
        versions = sorted(s.version for s in saves)
        if len(set(versions)) != len(versions):
            problems.append(f"{image['name']}: two saves answered 200 with the same version: {versions}")
        first = 2 if image["name"] in imported else 1
        if versions != list(range(first, first + len(versions))) or image["mask_version"] != versions[-1]:
            problems.append(f"{image['name']}: saved versions {versions} are not contiguous from {first} up to "
                            f"the final mask_version {image['mask_version']}")
        for s in saves:
            path = folder / "masks" / image["name"] / f"v{s.version}.png"
            stored = np.asarray(Image.open(path)) if path.is_file() else None
            if stored is None or stored.ndim != 2 or not np.array_equal(stored > 0, s.mask):
                problems.append(f"{image['name']} v{s.version}: the stored mask is not what {s.who} saved "
                                "(a lost update)")
    return problems


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--size", default="192x256", help="synthetic image size HxW (GlaS is about 522x775)")
    p.add_argument("--think", type=float, default=0.2, help="at most this many seconds between reading and saving")
    p.add_argument("--max-rounds", type=int, default=100_000, help="per annotator (a bound besides the time)")
    p.add_argument("--db", help="database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite)")
    p.add_argument("--keep", action="store_true", help="keep the project folder and the server log")
    args = p.parse_args()
    h, w = (int(x) for x in args.size.lower().split("x"))

    folder = Path(tempfile.mkdtemp(prefix="pathoseg-load-"))
    project_dir, log = folder / "project", folder / "server.log"
    tokens, imported = make_project(project_dir, args.db, args.images, args.annotators, (h, w))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(project_dir, args.db, port, log)
    tally = Tally()
    try:
        wait_ready(base, tokens["admin"], server)
        print(f"pathoseg serve on {base} ({'PostgreSQL' if args.db else 'SQLite'}); {args.annotators} annotators, "
              f"{args.images} images of {h}x{w}, {args.seconds:.0f} s", flush=True)
        start = time.monotonic()
        stop_at = start + args.seconds
        threads = [threading.Thread(target=annotator, daemon=True,
                                    args=(k, f"ann{k:02d}", tokens[f"ann{k:02d}"], base, stop_at, args.max_rounds,
                                          args.think, tally))
                   for k in range(args.annotators)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 120)
        elapsed = time.monotonic() - start
        if any(t.is_alive() for t in threads):
            tally.failures.append("an annotator was still waiting for an answer 120 s after the end")
        problems = check(tally, project_dir, base, tokens["admin"], imported)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    total = sum(len(v) for v in tally.latency.values())
    print(f"\n{total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s)\n")
    print("| endpoint | requests | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|")
    labels = {"list": "GET /api/images", "info": "GET /api/images/{id}", "image": "GET .../image.png",
              "mask": "GET .../mask.png", "save": "PUT .../mask"}
    for e in ENDPOINTS:
        v = tally.latency.get(e, [])
        print(f"| {labels[e]} | {len(v)} | {percentile(v, 50):.0f} | {percentile(v, 95):.0f} | "
              f"{max(v, default=float('nan')) * 1000:.0f} |")
    saved = tally.statuses.get(("save", 200), 0)
    conflicts = tally.statuses.get(("save", 409), 0)
    server_errors = sum(n for (_, status), n in tally.statuses.items() if status >= 500)
    print(f"\nsaves: {saved} accepted (200), {conflicts} refused as conflicts (409); 5xx: {server_errors}; "
          f"other failures: {len(tally.failures) - server_errors}; lost updates or version gaps: {len(problems)}")
    for line in (tally.failures + problems)[:20]:
        print("  -", line)
    ok = not tally.failures and not problems and server_errors == 0 and saved > 0
    if not ok:
        print(f"server log: {log}" + ("" if args.keep else " (kept)"))
    if ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
