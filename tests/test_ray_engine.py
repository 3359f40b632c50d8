"""``pathoseg predict --engine ray``: a local 2-worker Ray writes exactly what the
single-process path writes; a Ray address that does not answer is a one-line error, quickly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pathoseg.cli import main
from pathoseg.data.images import read_image
from pathoseg.data.mpp_estimate import MppEstimate
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.models import ModelConfig, build_model
from pathoseg.pipeline.ray_engine import RayConfig, RayWindows, start_ray, stop_ray
from test_slides import synthetic_slide


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray with CPUs for 2 workers for the module (starting it takes seconds);
    ``predict --engine ray`` uses a Ray that is already running and leaves it running."""
    assert start_ray(RayConfig(workers=2))
    try:
        yield
    finally:
        stop_ray()


@pytest.fixture(scope="module")
def random_model(tmp_path_factory, synth_dir) -> Path:
    """Lite0 with random weights, its gland logit shifted so that about half of a synthetic
    image is gland (unshifted, a random model calls everything or nothing gland, and equal
    outputs would prove little)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(weights="none")).eval()
    image = read_image(sorted((synth_dir / "images").iterdir())[0])
    with torch.inference_mode():
        logits = model(torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255))
        model.net.segmentation_head[0].bias[0] -= logits[0, 0].median()
    return Checkpoint.of(model, 1.0, mpp=0.62, instances={"min_size": 20}).save(
        tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The single-process run on one thread, as each worker runs: on a busy shared CPU two
    threads wait on each other whenever one is descheduled, which costs this test minutes
    (the benchmark compares outputs across thread counts)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _not_here(*args, **kwargs):
    raise AssertionError("a window was computed in the driver's process")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_writes_byte_identical_outputs_to_the_single_process_path(local_ray, random_model, synth_dir,
                                                                      one_torch_thread, tmp_path, capsys,
                                                                      monkeypatch):
    """Three images and a pyramidal slide over 2 workers; every file written (masks, instance
    maps, overlays, GeoJSON, label TIFF, overview) must equal the single process's. The images'
    resolution is estimated (as by default) at 0.93 µm/px, so both resample them to the model's
    0.62: the workers use the driver's estimates. The Ray run is given relative paths from
    another folder than the workers' own."""
    slide, _, _ = synthetic_slide(tmp_path)
    images = sorted((synth_dir / "images").iterdir())[:3]
    inputs = [str(random_model), *map(str, images), str(slide), "--tile", "256"]
    relative = [os.path.relpath(p, tmp_path) for p in inputs[:5]] + inputs[5:]
    with monkeypatch.context() as patch:
        patch.setattr("pathoseg.engine.mpp_regressor.MppRegressor.estimate",
                      lambda self, image: MppEstimate(0.93, 1.0, 0, method="encoder"))
        assert main(["predict", *inputs, "--out", str(tmp_path / "local")]) == 0
        local_out = capsys.readouterr().out
        patch.chdir(tmp_path)
        patch.setattr("pathoseg.engine.wsi.run.LocalWindows.logits", _not_here)  # the workers compute every window
        # One slide on two workers: its windows are split over both, this process stitches.
        assert main(["predict", *relative, "--out", "ray", "--engine", "ray", "--workers", "2"]) == 0
        ray_out = capsys.readouterr().out
        assert main(["predict", *relative, "--out", "whole", "--engine", "ray", "--workers", "2",
                     "--no-split-slides"]) == 0
    # At the model's own resolution the images come out otherwise: the estimates mattered.
    assert main(["predict", *inputs[:4], "--out", str(tmp_path / "native"), "--mpp", "0.62"]) == 0
    assert any((tmp_path / "native" / "instances" / f"{p.stem}.png").read_bytes()
               != (tmp_path / "local" / "instances" / f"{p.stem}.png").read_bytes() for p in images)

    local, distributed = _files(tmp_path / "local"), _files(tmp_path / "ray")
    expected = {f"{kind}/{p.stem}.png" for kind in ("masks", "instances", "overlays") for p in images}
    expected |= {f"slides/{slide.stem}{suffix}" for suffix in (".geojson", ".mask.tif", ".overview.png")}
    assert set(local) == expected  # nothing else, and the slide's tile folder is gone
    assert set(distributed) == expected
    differing = [name for name in expected if local[name] != distributed[name]]
    assert not differing, f"differ from the single-process outputs: {differing}"
    whole = _files(tmp_path / "whole")  # the slide whole on one worker
    assert whole == local, [name for name in expected if local[name] != whole.get(name)]
    # The comparison means something: the masks hold glands and background.
    masks = [read_image(tmp_path / "ray" / "masks" / f"{p.stem}.png") for p in images]
    assert any(0 < (m > 0).mean() < 1 for m in masks)
    assert '"gland_id"' in local[f"slides/{slide.stem}.geojson"].decode()
    # The same summary: the images, then the slide's glands.
    ray_lines = ray_out.splitlines()
    assert ray_lines[:3] == local_out.splitlines()[:3]  # "estimated 0.93 µm/px ... for <image>"
    assert ray_lines[3] == "3 images -> ray/masks, ray/instances, ray/overlays"
    assert ray_lines[4].split(" in ")[0] == local_out.splitlines()[4].split(" in ")[0]  # "<slide>: N glands"


class _FakeRay:
    """What RayWindows uses of ray: get and cancel, on refs that hold their value."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def get(self, ref: SimpleNamespace) -> np.ndarray:
        return ref.value

    def cancel(self, ref: SimpleNamespace) -> None:
        self.cancelled.append(int(ref.value[0]))


def _fake_actor(name: str, log: list) -> SimpleNamespace:
    def remote(path, read, tta):
        log.append((name, read))
        return SimpleNamespace(value=np.array([read]))
    return SimpleNamespace(window_logits=SimpleNamespace(remote=remote))


def test_a_slides_windows_go_round_robin_in_order_and_never_far_ahead():
    log: list = []
    fake = _FakeRay()
    windows = RayWindows(fake, [_fake_actor("a", log), _fake_actor("b", log)], ("gland", "contour"), ahead=3)
    slide = SimpleNamespace(path=Path("slide.tif"))
    taken = []
    for logits in windows.logits(slide, list(range(7)), tta=False):
        taken.append(int(logits[0]))
        assert len(log) <= len(taken) + 2  # submitted while this one was taken: at most 3 not yet taken
    assert taken == list(range(7))  # in the stitcher's order
    assert log == [("ab"[k % 2], k) for k in range(7)]  # each window once, the workers in turn
    # Stopped early (a stop, an error): what was queued ahead is cancelled, nothing more is sent.
    log.clear()
    stream = windows.logits(slide, list(range(7)), tta=False)
    assert [int(next(stream)[0]) for _ in range(2)] == [0, 1]
    stream.close()
    assert len(log) == 4 and fake.cancelled == [2, 3]


def test_a_worker_opens_a_slide_at_the_resolution_the_driver_found(tmp_path, monkeypatch):
    """A slide without metadata has only the driver's estimate: every worker (and the driver
    of a split slide) must open it at that, whatever form its path was given in."""
    from pathoseg.data.slides import write_pyramidal_tiff
    from pathoseg.pipeline.ray_engine import PredictJob, _absolute

    slide = write_pyramidal_tiff(tmp_path / "nometa.tif", np.full((300, 400, 3), 200, np.uint8))
    monkeypatch.chdir(tmp_path)
    job = _absolute(PredictJob(Path("out"), None, None, None, slide_mpps={Path("nometa.tif"): 0.31}))
    with job.open_slide(Path("nometa.tif")) as relative, job.open_slide(slide) as absolute:
        assert relative.mpp == absolute.mpp == 0.31


def test_a_bad_input_on_a_worker_is_one_line_naming_it(local_ray, random_model, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    # --mpp: no resolution estimate, which would read the image on the driver first
    argv = ["predict", str(random_model), str(bad), "--out", str(out), "--engine", "ray", "--mpp", "0.62"]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Ray workers" in stderr  # the image went out to a worker
    err = stderr.rsplit("\r", 1)[-1].strip()  # after the progress bar cleared itself
    assert len(err.splitlines()) == 1 and err.startswith("pathoseg: error:") and str(bad) in err, err
    assert not (out / "masks").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_a_ray_address_that_does_not_answer_is_one_line_at_once(random_model, synth_dir, tmp_path, capsys):
    out = tmp_path / "out"
    image = sorted((synth_dir / "images").iterdir())[0]
    started = time.monotonic()
    argv = ["predict", str(random_model), str(image), "--out", str(out), "--engine", "ray",
            "--address", f"127.0.0.1:{_closed_port()}"]
    assert main(argv) == 2
    assert time.monotonic() - started < RayConfig.answer_timeout_s + 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not answer" in err and "ray start --head" in err, err
    assert not out.exists()


_HANDSHAKE = """
import socket, sys, time
from pathoseg.errors import PathosegError
from pathoseg.pipeline.ray_engine import RayConfig, start_ray

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
started = time.monotonic()
try:
    start_ray(RayConfig(address=f"127.0.0.1:{listener.getsockname()[1]}", connect_timeout_s=2))
except PathosegError as exc:
    print(f"{time.monotonic() - started:.1f}", exc)
"""


def test_an_address_that_answers_but_is_not_ray_fails_within_the_timeout():
    """Ray's own connect retries for minutes; the driver gives up after connect_timeout_s.
    In a process of its own: the abandoned handshake goes on in a thread until it exits."""
    done = subprocess.run([sys.executable, "-c", _HANDSHAKE], capture_output=True, text=True, timeout=120)
    seconds, _, message = done.stdout.strip().partition(" ")
    assert message and "did not let this driver connect within 2 s" in message, done.stdout + done.stderr[-2000:]
    assert float(seconds) < 6


def test_ray_flags_need_the_ray_engine_and_refuse_other_backends(random_model, synth_dir, tmp_path, capsys):
    image = str(sorted((synth_dir / "images").iterdir())[0])
    out = tmp_path / "out"
    assert main(["predict", str(random_model), image, "--out", str(out), "--address", "127.0.0.1:6379"]) == 2
    assert "--engine ray" in capsys.readouterr().err
    assert main(["predict", str(random_model), image, "--out", str(out), "--engine", "ray", "--backend",
                 "onnx"]) == 2
    assert "torch backend only" in capsys.readouterr().err
    assert not out.exists()


def test_without_ray_installed_the_error_says_how_to_install_it(random_model, synth_dir, tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    image = str(sorted((synth_dir / "images").iterdir())[0])
    out = tmp_path / "out"
    assert main(["predict", str(random_model), image, "--out", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'pathoseg[ray]'" in err, err
    assert not out.exists()
