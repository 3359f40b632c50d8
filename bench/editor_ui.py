"""The editor, measured as a pathologist uses it: the simulated pathologist's plans for GlaS
testA images replayed through the real editor in headless Chromium (clicks, keys and drawn
lines, as tests/test_server_glands.py does on synthetic cases), on the 775 x 522 images and
on a 2048 x 2048 mosaic of them.

    python bench/editor_ui.py --checkpoint runs/hitl-one-loop/seed0/round0/model.pt \\
        --data ../shared/data/glas --images 10 [--shots docs/screenshots]

A temporary project gets the images and the model; the app's own predict job makes the
predictions. Per image: the plan's operations, the clicks + keys + drawn lines the replay
needed, edits the editor refused, and the editor's own time per operation (``state.timings``:
from the input event to the repainted glands layer, ms). Writes ``--json`` (default
``docs/results/editor_ui.json``): ``{"command", "device", "rows": [{"image", "size", "ops",
"interactions", "refused", "editor_ms": {kind: median}}], "median_ms": {"775x522": ..., "2048x2048": ...}}``.
On the mosaic only its ``--mosaic-fixes`` largest fixes and as many accepts are replayed.
``--shots`` also writes the queue, an image before and after correction, and the heat map.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage import measure, segmentation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser harness the tests drive the editor with

from pathoseg.data import load_dataset  # noqa: E402
from pathoseg.data.images import read_mask  # noqa: E402
from pathoseg.data.splits import make_split  # noqa: E402
from pathoseg.hitl.annotator import SimulatedAnnotator  # noqa: E402
from pathoseg.io import write_json  # noqa: E402
from pathoseg.server.services.images import add_image  # noqa: E402
from pathoseg.server.services.models import register_model  # noqa: E402
from pathoseg.server.services.queue import enqueue  # noqa: E402
from pathoseg.server.services.worker import Worker  # noqa: E402
from pathoseg.server.storage import Project  # noqa: E402
from test_server_browser import CHROMIUM, app_in_thread, logged_in_page  # noqa: E402
from test_server_glands import Editor, interior, seam_line  # noqa: E402
from tiny import create_user  # noqa: E402


class Counted(Editor):
    """The tests' editor driver, counting what a person would do: key presses, clicks, drags."""

    def __init__(self, page, shape) -> None:
        super().__init__(page, shape)
        self.interactions = 0

    def key(self, key: str) -> None:
        self.interactions += 1
        super().key(key)

    def click(self, pixel) -> None:
        self.interactions += 1
        super().click(pixel)

    def draw(self, points) -> None:
        self.interactions += 1
        super().draw(points)


def outline_points(mask: np.ndarray, every: int = 12, most: int = 40) -> list[tuple[float, float]]:
    """(x, y) points along a gland's outline, about ``every`` px apart."""
    contours = measure.find_contours(np.pad(mask, 1).astype(float), 0.5)
    if not contours:
        return []
    contour = max(contours, key=len) - 1
    step = max(1, len(contour) // most, every)
    return [(float(c), float(r)) for r, c in contour[::step]]


def stray_points(true: np.ndarray, pred: np.ndarray) -> list[tuple[float, float]]:
    """Points of the true outline outside the predicted gland: where a redraw paints."""
    points = [(x, y) for x, y in outline_points(true, every=4, most=200)
              if not pred[min(pred.shape[0] - 1, round(y)), min(pred.shape[1] - 1, round(x))]]
    return points or outline_points(true)[:2]  # [] only for an empty mask (the replay skips it)


def cut_line(gt: np.ndarray, pred_gland: np.ndarray, a: int, b: int) -> list[tuple[float, float]]:
    """A line across ``pred_gland`` between true glands a and b: their seam where they touch
    (as the tests draw it), else the pixels of the gland halfway between them."""
    seam = seam_line(gt, pred_gland, a, b)
    if seam:
        return seam
    da, db = ndi.distance_transform_edt(gt != a), ndi.distance_transform_edt(gt != b)
    rows, cols = np.nonzero(pred_gland & (np.abs(da - db) <= 1.0))
    if not len(rows):
        return []
    pts = np.stack([rows, cols], 1).astype(float)
    axis = np.linalg.eigh(np.cov(pts.T))[1][:, -1] if len(pts) > 1 else np.array([1.0, 0.0])
    return [(c + 0.5, r + 0.5) for r, c in pts[np.argsort((pts - pts.mean(0)) @ axis)]]


def problem(ed: Editor) -> bool:
    return "problem" in (ed.page.get_attribute("#status-line", "class") or "")


def replay(ed: Counted, gt: np.ndarray, pred: np.ndarray, plan) -> int:
    """Carry out the plan with the editor's tools (any operation kind); the edits refused."""
    refused = 0

    def check() -> None:
        nonlocal refused
        refused += problem(ed)

    for fix in plan.fixes:
        pending = list(fix.pred)
        merged = False
        for op in fix.ops:
            if op.kind == "split":
                line = cut_line(gt, pred == fix.pred[0], *fix.true[:2])
                if not line:
                    refused += 1
                    continue
                ed.key("v"), ed.click(interior(pred == fix.pred[0])), ed.key("x")
                ed.draw(line)
            elif op.kind == "merge" and not merged:
                merged = True
                ed.key("Escape"), ed.key("g")
                for i in fix.pred:
                    ed.click(interior(pred == i))
            elif op.kind == "merge":
                continue
            elif op.kind == "delete":
                ed.key("v"), ed.click(interior(pred == pending.pop(0))), ed.key("Delete"), ed.key("Delete")
            elif op.kind == "add_click":
                ed.key("c"), ed.click(interior(gt == fix.true[0]))
            elif op.kind == "add_polygon":
                ed.key("p")
                for x, y in outline_points(gt == fix.true[0]):
                    ed.interactions += 1
                    ed.click_at(y, x)
                ed.key("Enter")
            elif op.kind == "redraw_boundary":
                line = stray_points(gt == fix.true[0], pred == fix.pred[0])
                if not line:
                    refused += 1
                    continue
                ed.key("v"), ed.click(interior(pred == fix.pred[0])), ed.key("b")
                ed.draw(line)
            check()
    for i in plan.accepted:
        ed.key("v"), ed.click(interior(pred == i)), ed.key("k")
        check()
    ed.key("Shift+K")
    return refused


def mosaic(images: list[np.ndarray], masks: list[np.ndarray], side: int) -> tuple[np.ndarray, np.ndarray]:
    """A side x side tile of images (and their masks, ids kept apart) laid out in rows of the
    shortest image's height, each image cut to it: tissue edge to edge, no empty strips (a
    black strip is no tissue a pathologist would see, and a weak model calls it a gland)."""
    canvas, labels = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.int32)
    row_h = min(image.shape[0] for image in images)
    y = x = offset = 0
    for image, mask in zip(images * 8, masks * 8, strict=True):
        h, w = min(row_h, side - y), min(image.shape[1], side - x)
        if h <= 0:
            break
        canvas[y:y + h, x:x + w] = image[:h, :w]
        part = mask[:h, :w].astype(np.int32)
        labels[y:y + h, x:x + w] = np.where(part > 0, part + offset, 0)
        offset += int(mask.max())
        x += w
        if x >= side:
            x, y = 0, y + row_h
    return canvas, segmentation.relabel_sequential(labels)[0]  # ids 1..N, as the annotator numbers them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="the model whose predictions are corrected")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glas"))
    ap.add_argument("--images", type=int, default=10, help="testA images (first by name)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "results" / "editor_ui.json"))
    ap.add_argument("--shots", help="write the README's screenshots here (queue, before, after, heat map)")
    ap.add_argument("--mosaic-only", action="store_true",
                    help="replay only the mosaic, keeping the other rows of an earlier --json")
    ap.add_argument("--mosaic-fixes", type=int, default=30,
                    help="the mosaic's largest fixes and first accepts replayed (its full plan, hundreds of "
                         "glands, takes an hour on 2 cores; the time per edit is what the row measures)")
    args = ap.parse_args()
    if CHROMIUM is None:
        raise SystemExit("Debian's chromium is not installed (make test installs it)")

    data = load_dataset(args.data)
    names = make_split(data, "official").test["testA"][: args.images]
    truth = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Project(Path(tmp) / "lab", create=True)
        loaded = [data[n].load() for n in names]
        for name, (image, labels) in zip(names, loaded, strict=True):
            add_image(project, name, image)
            truth[name] = labels
        tile, tile_gt = mosaic([im for im, _ in loaded], [lb for _, lb in loaded], 2048)
        add_image(project, "mosaic_2048", tile)
        truth["mosaic_2048"] = tile_gt
        version = register_model(project, args.checkpoint)
        Worker(project).run_once(enqueue(project, "predict"))
        token = create_user(project, "bench", admin=True)
        rows = []
        if args.mosaic_only and Path(args.json).is_file():
            rows = [r for r in json.loads(Path(args.json).read_text())["rows"] if r["image"] != "mosaic_2048"]
        with app_in_thread(project) as url, logged_in_page(url, token) as page:
            page.select_option("#order", "name")
            if args.shots:
                Path(args.shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(args.shots) / "queue.png"))
            annotator = SimulatedAnnotator()
            for k, name in enumerate(["mosaic_2048"] if args.mosaic_only else [*names, "mosaic_2048"]):
                started = time.perf_counter()
                gt = truth[name]
                pred = read_mask(project.instances_path(version, name)).astype(np.int32)
                probs = read_mask(project.prediction_path(version, name)).astype(np.float32) / 255
                ed = Counted(page, gt.shape)
                ed.open(name)
                if args.shots and k == 0:
                    page.screenshot(path=str(Path(args.shots) / "before.png"))
                page.evaluate("window.pathoseg.state.timings.length = 0")
                plan = annotator.plan(pred, gt, probs)
                if name == "mosaic_2048":
                    plan = replace(plan, fixes=plan.fixes[: args.mosaic_fixes],
                                   accepted=plan.accepted[: args.mosaic_fixes])
                refused = replay(ed, gt, pred, plan)
                timings = page.evaluate("window.pathoseg.state.timings")
                if args.shots and k == 0:
                    page.screenshot(path=str(Path(args.shots) / "after.png"))
                    page.keyboard.press("o")
                    page.screenshot(path=str(Path(args.shots) / "heatmap.png"))
                    page.keyboard.press("o")
                ed.save()
                by_kind: dict[str, list[float]] = {}
                for t in timings:
                    by_kind.setdefault(t["type"], []).append(t["ms"])
                ops = Counter(op.kind for fix in plan.fixes for op in fix.ops)
                ops.update({"accept": len(plan.accepted), "accept_all": 1})
                row = {"image": name, "size": f"{gt.shape[1]}x{gt.shape[0]}", "ops": dict(ops),
                       "n_ops": sum(ops.values()), "interactions": ed.interactions, "refused": refused,
                       "editor_ms": {kind: float(np.median(v)) for kind, v in by_kind.items()},
                       "editor_ms_all": [t["ms"] for t in timings], "replay_s": time.perf_counter() - started}
                rows.append(row)
                print(f"{name:<14} {row['size']:>9}  ops {row['n_ops']:>3}  clicks+keys {ed.interactions:>4}  "
                      f"refused {refused}  editor median {np.median(row['editor_ms_all'] or [0]):.0f} ms  "
                      f"replay {row['replay_s']:.0f} s", flush=True)
                median_ms = write_results(Path(args.json), rows)  # after every image: a stopped run keeps its rows
    print(json.dumps(median_ms), f"\nwrote {args.json}")


def write_results(path: Path, rows: list[dict]) -> dict:
    sizes = {r["size"] for r in rows}
    median_ms = {s: float(np.median([ms for r in rows if r["size"] == s for ms in r["editor_ms_all"]] or [0]))
                 for s in sorted(sizes)}
    write_json(path, {"command": shlex.join(["python", "bench/editor_ui.py", *sys.argv[1:]]),
                      "device": f"headless Chromium on CPU ({platform.processor() or platform.machine()})",
                      "rows": rows, "median_ms": median_ms})
    return median_ms


if __name__ == "__main__":
    main()
