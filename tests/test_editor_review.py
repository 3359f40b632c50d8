"""The review flow in a real headless Chromium: the toolbar in one row, controls by login and
role, fit-to-view and zoom-to-gland, next/previous and auto-advance, shortcuts that change
saved work only with a modifier, failed requests said in the page."""

from __future__ import annotations

import json

import pytest
from PIL import Image as PILImage

from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.services.images import add_image
from pathoseg.server.services.models import register_model
from pathoseg.server.storage import Image, Project
from test_server_browser import CHROMIUM, FLAGS, app_in_thread, logged_in_page
from tiny import create_user, untrained_checkpoint

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")

STATE = "window.pathoseg.state"


@pytest.fixture
def served(tmp_path):
    project = Project(tmp_path / "proj", create=True)
    cfg = SyntheticConfig(size=(240, 320))
    for i in range(4):
        image, labels = synthetic_sample(80 + i, cfg)
        add_image(project, f"img_{i:02d}", image, labels if i < 2 else None)  # 2 approved, 2 new
    admin, annotator = create_user(project, "ana", admin=True), create_user(project, "bo")
    with app_in_thread(project) as url:
        yield url, admin, annotator, project


def open_image(page, name: str) -> None:
    page.click(f"#queue-list li:has-text('{name}')")
    page.wait_for_function(f"{STATE}.current && {STATE}.current.name === '{name}' && {STATE}.labels !== null")


def view(page) -> tuple[float, float, float]:
    return tuple(page.evaluate(f"[{STATE}.zoom, {STATE}.ox, {STATE}.oy]"))


def test_the_toolbar_is_one_row_at_1280_px(served):
    url, admin, _, _ = served
    with logged_in_page(url, admin) as page:
        tops = page.eval_on_selector_all("#toolbar button, #toolbar input",
                                         "els => els.map(e => e.getBoundingClientRect().top)")
        assert len(tops) > 15 and max(tops) - min(tops) < 10, tops
        # every tool says its shortcut
        titles = page.eval_on_selector_all("#toolbar button", "els => els.map(e => e.title)")
        assert all("(" in t and ")" in t for t in titles), titles


def test_controls_appear_after_login_and_by_role(served):
    url, admin, annotator, _ = served
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(url)
        for control in ("#retrain", "#export", "#models", "#upload", "#toolbar"):
            assert not page.is_visible(control), f"{control} shows before login"
        browser.close()
    with logged_in_page(url, annotator) as page:
        assert not page.is_visible("#retrain") and not page.is_visible("#export")
        assert page.is_visible("#models") and page.is_disabled("#models")
    with logged_in_page(url, admin) as page:
        assert page.is_visible("#retrain") and page.is_visible("#export") and page.is_enabled("#models")


def test_fit_to_view_after_zoom_and_zoom_to_a_gland(served):
    url, admin, _, _ = served
    with logged_in_page(url, admin) as page:
        open_image(page, "img_00")
        fitted = view(page)
        box = page.eval_on_selector("#view", "c => c.getBoundingClientRect().toJSON()")
        page.mouse.move(box["x"] + 200, box["y"] + 150)
        for _ in range(4):
            page.mouse.wheel(0, -100)
        zoomed = view(page)
        assert zoomed[0] > fitted[0] * 1.5
        page.keyboard.press("0")
        assert view(page) == pytest.approx(fitted)
        page.mouse.wheel(0, -100)
        page.click("#fit")
        assert view(page) == pytest.approx(fitted)
        # zoom to the selected gland: it fills the view, centred
        gland = page.evaluate(f"Math.max(...{STATE}.labels)")
        page.evaluate(f"window.pathoseg.select({gland})")
        page.keyboard.press("z")
        zoom, ox, oy = view(page)
        assert zoom > fitted[0]
        cx, cy = page.evaluate(f"""(() => {{ const s = {STATE}; let x = 0, y = 0, n = 0;
            s.labels.forEach((v, i) => {{ if (v === {gland}) {{ x += i % s.w; y += Math.floor(i / s.w); n++; }} }});
            return [x / n, y / n]; }})()""")
        w, h = page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]")
        assert abs(ox + cx * zoom - w / 2) < 0.2 * w and abs(oy + cy * zoom - h / 2) < 0.2 * h


def test_next_previous_and_auto_advance_after_approve(served):
    url, admin, _, project = served
    with logged_in_page(url, admin) as page:
        page.select_option("#order", "name")
        page.wait_for_function("document.querySelector('#queue-list li').textContent.startsWith('img_00')")
        assert page.text_content("#progress").startswith("2 of 4 approved")
        open_image(page, "img_00")
        page.keyboard.press("n")
        page.wait_for_function(f"{STATE}.current.name === 'img_01'")
        page.keyboard.press("Shift+N")
        page.wait_for_function(f"{STATE}.current.name === 'img_00'")
        open_image(page, "img_02")
        assert page.is_checked("#auto-next")
        page.keyboard.press("Control+Enter")  # approve: saved, then the next image still to review
        page.wait_for_function(f"{STATE}.current.name === 'img_03'")
        page.wait_for_function("document.getElementById('progress').textContent.startsWith('3 of 4')")
        with project.session() as s:
            assert s.query(Image).filter_by(name="img_02").one().status == "approved"
        page.select_option("#filter", "todo")
        page.wait_for_function("document.querySelectorAll('#queue-list li').length === 1")


def test_save_and_approve_keys_need_their_modifier(served):
    url, admin, _, project = served
    with logged_in_page(url, admin) as page:
        requests = []
        page.on("request", lambda r: requests.append(r.method) if "/mask" in r.url and r.method == "PUT" else None)
        open_image(page, "img_02")
        page.keyboard.press("a")
        assert "approve is Ctrl+Enter" in page.text_content("#status-line")
        page.keyboard.press("s")
        assert "save is Ctrl+S" in page.text_content("#status-line")
        page.wait_for_timeout(300)
        assert requests == []
        with project.session() as s:
            row = s.query(Image).filter_by(name="img_02").one()
            assert (row.status, row.mask_version) == ("new", 0)
        page.keyboard.press("Control+s")
        page.wait_for_function("document.getElementById('status-line').textContent.startsWith('saved')")
        assert requests == ["PUT"]


def test_a_failing_request_shows_a_message(served):
    url, admin, _, _ = served
    with logged_in_page(url, admin) as page:
        page.route("**/api/train", lambda route: route.fulfill(
            status=503, content_type="application/json", body=json.dumps({"detail": "the worker is away"})))
        page.click("#retrain")
        page.wait_for_selector("#status-line.problem")
        assert "the retrain could not be started: the worker is away" in page.text_content("#status-line")
        page.route("**/api/images/*/image.png", lambda route: route.fulfill(status=404, content_type="application/json",
                                                                          body=json.dumps({"detail": "gone"})))
        page.click("#queue-list li:nth-child(1)")
        page.wait_for_function("document.getElementById('status-line').textContent.includes('could not be opened')")


def test_a_freshly_uploaded_image_gets_glands_without_a_manual_predict(served, tmp_path):
    url, admin, _, project = served
    register_model(project, untrained_checkpoint(tmp_path / "m.pt"))
    image = synthetic_sample(99, SyntheticConfig(size=(240, 320)))[0]
    path = tmp_path / "fresh.png"
    PILImage.fromarray(image).save(path)
    with logged_in_page(url, admin) as page:
        page.set_input_files("#upload", str(path))
        page.wait_for_selector("#queue-list li:has-text('fresh')")
        # the server's worker predicts it; the queue follows the job (no predict button pressed)
        page.wait_for_selector("#queue-list li:has-text('fresh') .badge.predicted", timeout=60_000)
        open_image(page, "fresh")
        page.wait_for_function(f"{STATE}.prob !== null")
        assert page.evaluate(f"{STATE}.prob.length") == 240 * 320  # the model's probability map, as served
        assert page.evaluate(f"{STATE}.current.status") == "predicted"
