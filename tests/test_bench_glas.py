"""The GlaS benchmark's GPU protocol (docs/benchmarks.md §5b), run on the CPU with a tiny
budget on a few GlaS images: the script the GPU would run works end to end, and its summary
holds every evaluation variant with the error anatomy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["train_1", "train_2", "train_3", "train_4", "train_5", "testA_1", "testB_3"]


@pytest.fixture(scope="module")
def glas_subset(glas_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glas")
    lines = (glas_dir / "Grade.csv").read_bytes().split(b"\r")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(b",")[0].decode() in NAMES]
    (root / "Grade.csv").write_bytes(b"\r".join(keep))
    for folder, suffix in (("images", ""), ("masks", "_anno")):
        (root / folder).mkdir()
        for n in NAMES:
            (root / folder / f"{n}{suffix}.png").write_bytes((glas_dir / folder / f"{n}{suffix}.png").read_bytes())
    return root


@pytest.mark.slow
def test_gpu_protocol_runs_on_the_cpu_with_a_tiny_budget(glas_subset, tmp_path):
    out, summary = tmp_path / "run", tmp_path / "glas_gpu.json"
    # the GPU command of docs/benchmarks.md with the device, schedule, seeds and pixels cut down
    cmd = [sys.executable, str(ROOT / "bench" / "glas_instances.py"), "--model", "lite2", "--output-stride", "8",
           "--crop", "64", "--epochs", "1", "--batch-size", "2", "--scale", "0.25", "--select", "f1", "--variants",
           "--boundary-weight", "5",
           "--tta-scales", "0.5", "--headline", "select-iou+flip+scales",
           "--device", "cpu", "--seeds", "0", "--data", str(glas_subset), "--out", str(out),
           "--json", str(summary)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "seed0" / "result.json").read_text())
    assert result["config"]["model"]["preset"] == "lite2" and result["config"]["model"]["output_stride"] == 8
    assert result["config"]["boundary_weight"] == 5.0
    assert set(result["decoders"]) == {"model", "components", "flip", "flip+scales", "select-iou",
                                       "select-iou+flip+scales"}
    for variant in result["decoders"].values():
        for part in ("testA", "testB"):
            errors = variant[part]["errors"]
            assert set(errors) >= {"merged", "split", "missed", "false"}
            assert all(isinstance(v, int) and v >= 0 for v in errors.values())
    written = json.loads(summary.read_text())
    assert written["command"].startswith("python bench/glas_instances.py --model lite2")
    assert len(written["testB"]["f1"]) == 1 and "CPU" in written["device"]
    assert written["headline"] == "select-iou+flip+scales"
    assert written["testB"]["f1"] == [result["decoders"]["select-iou+flip+scales"]["testB"]["f1"]]
    assert "DCAN" in done.stdout  # the table against the published methods
