"""The editor's gland tools in a real headless Chromium (#10, part 4).

Synthetic images with near-touching glands (``gap=1``) get a prediction with a known error (a
merge of two glands, or a gland cut in two), a missed gland and a false one; the simulated
pathologist (pathoseg.hitl.annotator) plans its operations against the ground truth, and the
plan is replayed through the editor with clicks, key presses and drawn lines. The saved
operation log must name the plan's operations, the saved instance map must be the
simulator's corrected map. Then one test per tool, and the editor's refusals of bad input.

The prediction is put in place by writing the project's probability and instance files for
an active model version directly: nothing is trained. The scenarios avoid
``redraw_boundary`` (every kept gland is exact), since replaying a free-hand redraw exactly
is impractical; the boundary brush and eraser have a test of their own.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from skimage import segmentation

from pathoseg.data.images import write_label_png
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.hitl.annotator import SimulatedAnnotator
from pathoseg.operations import GLAND_OPERATIONS
from pathoseg.server.services.images import add_image
from pathoseg.server.storage import ModelVersion, Project
from pathoseg.server.vocabulary import OPERATION_TYPES
from test_server_browser import CHROMIUM, DOC_SHOTS, app_in_thread, logged_in_page
from tiny import create_user

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")

CFG = SyntheticConfig(size=(240, 320), glands=(12, 16), gap=1)  # near-touching glands
EIGHT = np.ones((3, 3), bool)
CASES = {"merged_pair": (0, "merge"), "cut_gland": (1, "split")}


# -- scenarios -----------------------------------------------------------------------------
def seam_of(gt: np.ndarray, a: int, b: int) -> np.ndarray:
    """Background pixels next to both glands (8-neighbours): where a model fuses them."""
    return ndi.binary_dilation(gt == a, EIGHT) & ndi.binary_dilation(gt == b, EIGHT) & (gt == 0)


def isolation(gt: np.ndarray, k: int) -> float:
    return float(ndi.distance_transform_edt(gt != k)[(gt > 0) & (gt != k)].min())


def false_gland(gt: np.ndarray, radius: int = 7) -> np.ndarray:
    """A disc where the tissue is farthest from any gland."""
    far = ndi.distance_transform_edt(gt == 0)
    m = radius + 3
    far[:m], far[-m:], far[:, :m], far[:, -m:] = 0, 0, 0, 0
    cy, cx = np.unravel_index(np.argmax(far), far.shape)
    yy, xx = np.mgrid[: gt.shape[0], : gt.shape[1]]
    return np.hypot(yy - cy, xx - cx) <= radius


def scenario(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, truth, predicted glands, gland probability): the prediction fuses two
    near-touching glands (``merge``) or cuts the largest isolated gland in two (``split``),
    misses the largest other isolated gland (which the model still sees at 0.45, so one
    click recovers it) and finds a gland in empty stroma; every other gland is exact."""
    image, gt = synthetic_sample(seed, CFG)
    n = int(gt.max())
    areas = np.bincount(gt.ravel())
    pred = gt.copy()
    if kind == "merge":
        a, b = next((a, b) for a in range(1, n + 1) for b in range(a + 1, n + 1) if seam_of(gt, a, b).any())
        pred[(gt == b) | seam_of(gt, a, b)] = a
        used = {a, b}
    else:
        s = max((k for k in range(1, n + 1) if isolation(gt, k) >= 3), key=lambda k: areas[k])
        ys, xs = np.nonzero(gt == s)
        major = np.linalg.eigh(np.cov(np.stack([ys - ys.mean(), xs - xs.mean()])))[1][:, -1]
        side = (ys - ys.mean()) * major[0] + (xs - xs.mean()) * major[1] > 0
        pred[ys[side], xs[side]] = n + 1
        used = {s}
    missed = max((k for k in range(1, n + 1) if k not in used and isolation(gt, k) >= 3), key=lambda k: areas[k])
    pred[gt == missed] = 0
    pred[false_gland(gt)] = pred.max() + 1
    pred = segmentation.relabel_sequential(pred)[0].astype(np.int32)
    probs = np.where(pred > 0, 0.92, np.where(gt == missed, 0.45, 0.04)).astype(np.float32)
    return image, gt, pred, probs


def interior(mask: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel deepest inside ``mask``."""
    r, c = np.unravel_index(np.argmax(ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]), mask.shape)
    return int(r), int(c)


def seam_line(gt: np.ndarray, pred_gland: np.ndarray, a: int, b: int) -> list[tuple[float, float]]:
    """A line (image x, y) through the seam of two fused glands, in order along it."""
    rows, cols = np.nonzero(seam_of(gt, a, b) & pred_gland)
    pts = np.stack([rows, cols], 1).astype(float)
    axis = np.linalg.eigh(np.cov(pts.T))[1][:, -1] if len(pts) > 1 else np.array([1.0, 0.0])
    order = np.argsort((pts - pts.mean(0)) @ axis)
    return [(c + 0.5, r + 0.5) for r, c in pts[order]]


def matched_ious(expected: np.ndarray, saved: np.ndarray) -> list[float]:
    """IoU of each expected gland with the saved gland that overlaps it most (one to one)."""
    ious, used = [], set()
    for g in np.unique(expected[expected > 0]):
        mine = expected == g
        ids, counts = np.unique(saved[mine], return_counts=True)
        best = int(ids[np.argmax(np.where(ids > 0, counts, -1))])
        assert best > 0 and best not in used, f"gland {g} has no saved gland of its own"
        used.add(best)
        theirs = saved == best
        ious.append(float((mine & theirs).sum() / (mine | theirs).sum()))
    assert len(used) == len(np.unique(saved[saved > 0])), "the saved mask has glands the simulator does not"
    return ious


# -- the app and the page --------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    project = Project(tmp_path / "proj", create=True)
    cases = {}
    for name, (seed, kind) in CASES.items():
        image, gt, pred, probs = scenario(seed, kind)
        add_image(project, name, image)
        write_label_png(project.prediction_path(1, name), np.round(probs * 255).astype(np.uint8))
        write_label_png(project.instances_path(1, name), pred)
        cases[name] = (gt, pred, probs)
    with project.session() as s:  # the model version whose files these are (no checkpoint needed)
        s.add(ModelVersion(version=1, val_iou=None, active=True, trained_on=[]))
        s.commit()
    token = create_user(project, "ana", admin=True)
    with app_in_thread(project) as url:
        yield url, token, project, cases


class Editor:
    """Drives the page like a person: clicks on image pixels, keys, drawn lines."""

    def __init__(self, page, shape: tuple[int, int]) -> None:
        self.page = page
        self.shape = shape

    def open(self, name: str) -> None:
        self.page.click(f"#queue-list li:has-text('{name}')")
        self.page.wait_for_function(f"window.pathoseg.state.current && window.pathoseg.state.current.name === '{name}'"
                                    " && window.pathoseg.state.labels !== null && window.pathoseg.state.prob !== null")

    def at(self, row: float, col: float) -> tuple[float, float]:
        """Screen position of an image point (col = x, row = y)."""
        return tuple(self.page.evaluate(f"window.pathoseg.imageToScreen({col}, {row})"))

    def click(self, pixel: tuple[int, int]) -> None:
        """A click on the centre of pixel (row, col)."""
        self.page.mouse.click(*self.at(pixel[0] + 0.5, pixel[1] + 0.5))

    def click_at(self, row: float, col: float) -> None:
        self.page.mouse.click(*self.at(row, col))

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)

    def draw(self, points: list[tuple[float, float]]) -> None:
        """A line through image points (x, y), mouse held down."""
        first = self.at(points[0][1], points[0][0])
        self.page.mouse.move(*first)
        self.page.mouse.down()
        for x, y in [*points[1:], points[-1]]:
            self.page.mouse.move(*self.at(y, x))
        self.page.mouse.up()

    def labels(self) -> np.ndarray:
        flat = self.page.evaluate("Array.from(window.pathoseg.state.labels)")
        return np.array(flat, np.int32).reshape(self.shape)

    def log(self) -> list[str]:
        return self.page.evaluate("window.pathoseg.state.log.map((e) => e.type)")

    def status(self) -> str:
        return self.page.text_content("#status-line")

    def save(self) -> None:
        self.key("Control+s")
        self.page.wait_for_function("document.getElementById('status-line').textContent.startsWith('saved')")


@pytest.fixture
def editor(served):
    url, token, project, cases = served
    with logged_in_page(url, token) as page:
        yield Editor(page, CFG.size), project, cases


# -- the simulated pathologist's plan, replayed -----------------------------------------------
def replay(ed: Editor, gt: np.ndarray, pred: np.ndarray, plan, after_first_fix=None) -> list[str]:
    """Carry out ``plan`` with the editor's tools; the operation types it should log."""
    done: list[str] = []
    for fix in plan.fixes:
        kinds = [op.kind for op in fix.ops]
        if fix.kind == "merged":  # one predicted gland over two true ones: split along their seam
            assert kinds == ["split"] and len(fix.true) == 2, fix
            (i,), (a, b) = fix.pred, fix.true
            ed.key("v")
            ed.click(interior(pred == i))
            ed.key("x")
            ed.draw(seam_line(gt, pred == i, a, b))
        elif fix.kind == "split":  # a true gland cut in pieces: merge them
            assert kinds == ["merge"] * (len(fix.pred) - 1), fix
            ed.key("Escape")
            ed.key("g")
            for i in fix.pred:
                ed.click(interior(pred == i))
        elif fix.kind == "missed":
            assert kinds == ["add_click"], fix
            ed.key("c")
            ed.click(interior(gt == fix.true[0]))
        elif fix.kind == "false":
            assert kinds == ["delete"], fix
            ed.key("v")
            ed.click(interior(pred == fix.pred[0]))
            ed.key("Delete")  # the first press asks, the second deletes
            ed.key("Delete")
        else:
            raise AssertionError(f"the scenario should not need a {fix.kind} fix ({kinds})")
        assert "problem" not in (ed.page.get_attribute("#status-line", "class") or ""), ed.status()
        if after_first_fix is not None and not done:
            after_first_fix()
        done += kinds
    for i in plan.accepted:
        ed.key("v")
        ed.click(interior(pred == i))
        ed.key("k")
    ed.key("Shift+K")
    return [*done, *["accept"] * len(plan.accepted), "accept_all"]


@pytest.mark.parametrize("name", list(CASES))
def test_the_simulated_pathologists_plan_replayed_in_the_editor(editor, name, tmp_path):
    ed, project, cases = editor
    gt, pred, probs = cases[name]
    annotator = SimulatedAnnotator()
    plan = annotator.plan(pred, gt, probs)
    corrected, effort = annotator.correct(pred, gt, probs)
    assert "redraw_boundary" not in effort.operations, "the scenario must not need boundary redraws"
    ed.open(name)
    assert np.array_equal(ed.labels(), pred)  # the editor starts from the model's glands
    # PATHOSEG_UPDATE_SCREENSHOTS=1 refreshes the README's picture: the fused glands just split
    shots = DOC_SHOTS if os.environ.get("PATHOSEG_UPDATE_SCREENSHOTS") and name == "merged_pair" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    expected = replay(ed, gt, pred, plan, lambda: ed.page.screenshot(path=str(shots / "editor.png")))
    assert (shots / "editor.png").stat().st_size > 10_000
    assert Counter(expected) == effort.operations  # the replay is the plan, operation for operation
    ed.save()

    (image,) = [i for i in ed.page.evaluate("window.pathoseg.state.images") if i["name"] == name]
    versions = ed.page.evaluate(f"""fetch('/api/images/{image["id"]}/masks', {{headers: {{Authorization:
        'Bearer ' + window.pathoseg.state.token}}}}).then((r) => r.json())""")
    (saved,) = versions
    # (a) the app logged the plan's operations, in the order they were done, with their counts
    assert [e["type"] for e in saved["operation_log"]] == expected
    assert saved["operations"] == effort.operations
    assert all(e["timestamp"] for e in saved["operation_log"])
    # (b) the saved instance map is the simulator's corrected map
    stored = np.array(Image.open(project.mask_path(name, 1))).astype(np.int32)
    ious = matched_ious(corrected.astype(np.int32), stored)
    assert min(ious) >= 0.99, sorted(ious)[:3]


def test_the_editor_logs_the_simulators_vocabulary():
    assert set(GLAND_OPERATIONS) <= set(OPERATION_TYPES)


# -- one test per tool ------------------------------------------------------------------------
def gland_ids(labels: np.ndarray) -> set[int]:
    return set(np.unique(labels[labels > 0]).tolist())


def an_isolated_gland(gt: np.ndarray, pred: np.ndarray) -> int:
    """The largest predicted gland that is exactly a true gland far from the others."""
    best = [(int((pred == i).sum()), i) for i in gland_ids(pred)
            if len(np.unique(gt[pred == i])) == 1 and isolation(pred, i) >= 5]
    return max(best)[1]


def test_split_makes_two_glands(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    ed.open("merged_pair")
    g = an_isolated_gland(gt, pred)
    ys, xs = np.nonzero(pred == g)
    ed.key("v")
    ed.click(interior(pred == g))
    ed.key("x")
    # a vertical line across the gland through its middle, from stroma to stroma
    x = float(np.median(xs)) + 0.5
    ed.draw([(x, ys.min() - 4.5), (x, (ys.min() + ys.max()) / 2), (x, ys.max() + 4.5)])
    after = ed.labels()
    pieces = set(np.unique(after[pred == g]).tolist()) - {0}
    assert len(pieces) == 2 and g in pieces, ed.status()
    assert gland_ids(after) == gland_ids(pred) | pieces
    new = (pieces - {g}).pop()
    left, right = (after == g), (after == new)
    assert abs(left.sum() - right.sum()) < 0.3 * (pred == g).sum()
    line = (pred == g) & (after == 0)
    assert 0 < line.sum() <= 2 * (ys.max() - ys.min() + 1)  # the line's pixels became background
    assert ed.log() == ["split"]
    assert np.array_equal(after[pred != g], pred[pred != g])  # nothing else changed


def test_merge_makes_one_gland_and_refuses_a_gland_with_itself(editor):
    ed, _, cases = editor
    _, pred, _ = cases["cut_gland"]
    ed.open("cut_gland")
    a, b = sorted(gland_ids(pred))[:2]
    ed.key("g")
    ed.click(interior(pred == a))
    ed.click(interior(pred == a))  # the same gland again
    assert "cannot be merged with itself" in ed.status()
    assert np.array_equal(ed.labels(), pred) and ed.log() == []
    ed.click(interior(pred == b))
    after = ed.labels()
    assert (after[(pred == a) | (pred == b)] == a).all() and b not in gland_ids(after)
    assert gland_ids(after) == gland_ids(pred) - {b}
    assert ed.log() == ["merge"]


def test_merge_fills_the_seam_between_two_halves(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    ed.open("merged_pair")
    g = an_isolated_gland(gt, pred)
    ys, xs = np.nonzero(pred == g)
    x = float(np.median(xs)) + 0.5
    ed.key("v")
    ed.click(interior(pred == g))
    ed.key("x")
    ed.draw([(x, ys.min() - 4.5), (x, ys.max() + 4.5)])
    halves = set(np.unique(ed.labels()[pred == g]).tolist()) - {0}
    assert len(halves) == 2
    ed.key("Escape")
    ed.key("g")
    for h in sorted(halves):
        ed.click(interior(ed.labels() == h))
    after = ed.labels()
    assert ((after == g) != (pred == g)).sum() <= 3, "the merged halves are the gland again, line and all"
    assert ed.log() == ["split", "merge"]


def test_delete_removes_the_gland(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    ed.open("merged_pair")
    g = an_isolated_gland(gt, pred)
    ed.key("v")
    ed.click(interior(pred == g))
    assert f"gland {g} selected" in ed.status()
    ed.key("Delete")  # deleting needs a second press: the first says so and changes nothing
    assert np.array_equal(ed.labels(), pred) and ed.log() == []
    assert f"press Delete again to delete gland {g}" in ed.status()
    ed.key("Delete")
    after = ed.labels()
    assert g not in gland_ids(after) and (after[pred == g] == 0).all()
    assert gland_ids(after) == gland_ids(pred) - {g}
    assert ed.log() == ["delete"]
    ed.key("Control+z")  # undo brings it back
    assert np.array_equal(ed.labels(), pred) and ed.log() == ["delete", "undo"]
    ed.key("Control+y")
    assert g not in gland_ids(ed.labels())


def test_one_click_add_takes_the_models_region_or_falls_back_to_a_polygon(editor):
    ed, _, cases = editor
    _, pred, probs = cases["merged_pair"]
    ed.open("merged_pair")
    missed = (probs > 0.3) & (probs < 0.5)
    r, c = interior(missed)
    ed.key("c")
    ed.click((r + 3, c - 2))  # anywhere inside it
    after = ed.labels()
    (new,) = gland_ids(after) - gland_ids(pred)
    assert after[r + 3, c - 2] == new and np.array_equal(after == new, missed)
    assert ed.log() == ["add_click"]
    # where the model sees nothing: a polygon instead
    far = np.argwhere(ndi.distance_transform_edt(np.pad(probs < 0.3, 1))[1:-1, 1:-1] > 12)[0]
    ed.click(tuple(far))
    assert "draw a polygon" in ed.status()
    assert ed.page.evaluate("window.pathoseg.state.tool") == "polygon"
    assert ed.log() == ["add_click"] and gland_ids(ed.labels()) == gland_ids(after)
    y, x = far
    for dy, dx in [(-5, -5), (-5, 5), (5, 5), (5, -5)]:  # pixel corners
        ed.click_at(y + dy, x + dx)
    ed.key("Enter")
    drawn = ed.labels()
    (square,) = gland_ids(drawn) - gland_ids(after)
    assert (drawn == square).sum() == 100  # pixels whose centres lie inside the 10 x 10 square
    assert ed.log() == ["add_click", "add_polygon"]


def test_boundary_brush_and_eraser_act_on_the_selected_gland(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    ed.open("merged_pair")
    g = an_isolated_gland(gt, pred)
    ys, xs = np.nonzero(pred == g)
    ed.key("v")
    ed.click(interior(pred == g))
    ed.page.evaluate("window.pathoseg.state.size = 6")
    ed.key("e")
    x = float(xs.max()) + 0.5  # erase along the gland's right edge
    ed.draw([(x, float(ys.min())), (x, float(ys.max()))])
    erased = ed.labels()
    assert (erased == g).sum() < (pred == g).sum() and np.array_equal(erased[pred != g], pred[pred != g])
    ed.key("b")
    ed.draw([(x + 2, float(ys.min())), (x + 2, float(ys.max()))])  # paint it back, and more
    painted = ed.labels()
    assert (painted == g).sum() > (pred == g).sum()
    assert np.array_equal(painted[pred > 0][pred[pred > 0] != g], pred[pred > 0][pred[pred > 0] != g])
    assert ed.log() == ["redraw_boundary", "redraw_boundary"]
    ed.key("Control+z")
    ed.key("Control+z")
    assert np.array_equal(ed.labels(), pred)


def test_bad_input_is_refused_with_the_reason_and_changes_nothing(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    ed.open("merged_pair")
    page = ed.page
    g = an_isolated_gland(gt, pred)
    y, x = np.argwhere(ndi.distance_transform_edt(np.pad(pred == 0, 1))[1:-1, 1:-1] > 10)[0] + 0.5
    attempts = {
        "window.pathoseg.deleteGland(999)": "gland 999 is not in the mask",
        "window.pathoseg.acceptGland(999)": "gland 999 is not in the mask",
        f"window.pathoseg.mergeGlands({g}, 999)": "gland 999 is not in the mask",
        f"window.pathoseg.mergeGlands({g}, {g})": "cannot be merged with itself",
        f"window.pathoseg.splitAlong([[1, 1], [5, 1]], {g})": f"does not cross gland {g}",
        f"window.pathoseg.splitAlong([[{x - 4}, {y}], [{x + 4}, {y}]], 0)": "does not cross a gland",
        "window.pathoseg.deleteGland(0)": "select a gland",
    }
    for call, reason in attempts.items():
        assert page.evaluate(call) is False, call
        assert reason in ed.status(), (call, ed.status())
        assert "problem" in page.get_attribute("#status-line", "class")
        assert np.array_equal(ed.labels(), pred) and ed.log() == [], call
    # a line that ends inside the gland does not cut it in two
    ys, xs = np.nonzero(pred == g)
    ed.key("v")
    ed.click(interior(pred == g))
    ed.key("x")
    ed.draw([(float(np.median(xs)) + 0.5, ys.min() - 4.5), (float(np.median(xs)) + 0.5, float(np.median(ys)))])
    assert f"does not cut gland {g} in two" in ed.status()
    assert np.array_equal(ed.labels(), pred) and ed.log() == []
    # a click on a gland that is there already is no one-click add
    ed.key("c")
    ed.click(interior(pred == g))
    assert "there is a gland here already" in ed.status() and ed.log() == []


def test_unsaved_edits_are_not_lost_silently(editor):
    ed, _, cases = editor
    gt, pred, _ = cases["merged_pair"]
    page = ed.page
    ed.open("merged_pair")
    warned = page.evaluate("""() => { const e = new Event('beforeunload', {cancelable: true});
        window.dispatchEvent(e); return e.defaultPrevented; }""")
    assert warned is False  # nothing to lose yet
    ed.key("v")
    ed.click(interior(pred == an_isolated_gland(gt, pred)))
    ed.key("Shift+Delete")  # at once
    warned = page.evaluate("""() => { const e = new Event('beforeunload', {cancelable: true});
        window.dispatchEvent(e); return e.defaultPrevented; }""")
    assert warned is True
    dialogs = []
    page.once("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.click("#queue-list li:has-text('cut_gland')")
    page.wait_for_timeout(300)
    assert dialogs and "unsaved edits" in dialogs[0]
    assert page.evaluate("window.pathoseg.state.current.name") == "merged_pair" and ed.log() == ["delete"]
    ed.save()
    ed.open("cut_gland")  # saved: no question asked
    # the on-screen help lists the shortcuts
    ed.key("?")
    assert page.is_visible("#help") and "Shift+K" in page.text_content("#help")
    ed.key("Escape")
    assert not page.is_visible("#help")


def test_a_saved_mask_reopens_with_its_glands(editor):
    ed, project, cases = editor
    _, pred, _ = cases["cut_gland"]
    ed.open("cut_gland")
    ed.key("g")
    a, b = sorted(gland_ids(pred))[-2:]
    ed.click(interior(pred == a))
    ed.click(interior(pred == b))
    ed.save()
    stored = np.array(Image.open(project.mask_path("cut_gland", 1)))
    assert len(gland_ids(stored)) == len(gland_ids(pred)) - 1
    ed.page.reload()
    ed.page.wait_for_selector("#queue-list li")
    ed.open("cut_gland")
    assert np.array_equal(ed.labels(), stored)


def test_more_than_255_glands_travel_as_16_bit(editor):
    ed, project, _ = editor
    ed.open("merged_pair")
    ed.page.evaluate("""() => { const s = window.pathoseg.state; s.labels.fill(0);
        for (let k = 0; k < 300; k++) s.labels[(Math.floor(k / 20) * 4) * s.w + (k % 20) * 4] = k + 1;
        s.dirty = true; }""")
    ed.save()
    stored = np.array(Image.open(project.mask_path("merged_pair", 1)))
    assert stored.dtype == np.uint16 and len(gland_ids(stored)) == 300 and stored.max() == 300
