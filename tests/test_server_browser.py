"""End to end in a real headless Chromium: log in, paint a stroke, save, check the stored mask."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from scipy import ndimage as ndi

from pathoseg.data.images import read_mask
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.app import ServerConfig, create_app
from pathoseg.server.services.images import add_image
from pathoseg.server.storage import Project
from tiny import create_user

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOC_SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_in_thread(project: Project) -> Iterator[str]:
    """The app of ``project`` (no automatic retraining) served on a free loopback port by
    uvicorn in a thread; yields its URL and stops it afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServerConfig(str(project.root), retrain_every=0)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def logged_in_page(url: str, token: str, bypass_csp: bool = True) -> Iterator:
    """A headless Debian Chromium page logged in to the app at ``url``, its queue loaded.
    ``bypass_csp``: the tests' own page scripts (``wait_for_function``) are evaluated strings,
    which the app's Content-Security-Policy forbids; one test runs the app under it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 760}, bypass_csp=bypass_csp)
        page.console_messages = []
        page.on("console", lambda message: page.console_messages.append(message.text))
        page.goto(url)
        page.fill("#token", token)
        page.click("#login-btn")
        page.wait_for_selector("#queue-list li")
        yield page
        browser.close()


@pytest.fixture
def served(tmp_path):
    project = Project(tmp_path / "proj", create=True)
    cfg = SyntheticConfig(size=(240, 320))
    for i in range(4):
        image, labels = synthetic_sample(70 + i, cfg)
        add_image(project, f"slide_{i:02d}", image, labels if i < 2 else None)
    token = create_user(project, "ana", admin=True)
    with app_in_thread(project) as url:
        yield url, token, project


def test_paint_a_stroke_and_save(served, tmp_path):
    url, token, project = served
    # PATHOSEG_UPDATE_SCREENSHOTS=1 refreshes the README's queue picture (tests/test_server_glands.py
    # takes the editor's); otherwise they go to tmp
    shots = DOC_SHOTS if os.environ.get("PATHOSEG_UPDATE_SCREENSHOTS") else tmp_path
    with logged_in_page(url, token) as page:
        page.select_option("#order", "name")
        page.wait_for_function("document.querySelectorAll('#queue-list li').length === 4")
        page.click("#queue-list li:nth-child(3)")  # slide_02: no mask yet
        page.wait_for_function("window.pathoseg.state.current && window.pathoseg.state.current.name === 'slide_02'")
        page.click("[data-tool=brush]")
        size = 10
        page.evaluate(f"window.pathoseg.state.size = {size}")
        start, end = (60, 50), (200, 150)  # image pixels
        p0 = page.evaluate(f"window.pathoseg.imageToScreen({start[0]}, {start[1]})")
        p1 = page.evaluate(f"window.pathoseg.imageToScreen({end[0]}, {end[1]})")
        page.mouse.move(*p0)
        page.mouse.down()
        for t in np.linspace(0, 1, 25)[1:]:
            page.mouse.move(p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]))
        page.mouse.up()
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(tmp_path / "stroke.png"))
        page.click("#submit")
        page.wait_for_function("document.getElementById('status-line').textContent.startsWith('saved')")
        page.screenshot(path=str(shots / "queue.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 420})

    stored = read_mask(project.mask_path("slide_02", 1))
    assert stored.max() == 1, "one stroke on empty tissue paints one gland"
    stored = stored > 0
    # distance of every pixel to the stroke's centre line
    line = np.zeros(stored.shape, bool)
    for t in np.linspace(0, 1, 400):
        line[round(start[1] + t * (end[1] - start[1])), round(start[0] + t * (end[0] - start[0]))] = True
    dist = ndi.distance_transform_edt(~line)
    assert stored[dist <= size / 2 - 1.5].all(), "the stroke's core must be painted"
    assert not stored[dist > size / 2 + 1.5].any(), "nothing may change away from the stroke"
    assert (tmp_path / "stroke.png").stat().st_size > 10_000


def test_the_editor_runs_under_its_content_security_policy(served):
    """No inline script, no eval: the app logs in, lists the queue and opens an image with its
    Content-Security-Policy enforced, and the browser reports no violation."""
    url, token, _ = served
    with logged_in_page(url, token, bypass_csp=False) as page:
        page.click("#queue-list li:nth-child(1)")
        page.wait_for_selector("#status-line:has-text('mask version')")
        violations = [m for m in page.console_messages if "Content Security Policy" in m]
        assert not violations, violations
        assert "glands" in page.inner_text("#status-line")
