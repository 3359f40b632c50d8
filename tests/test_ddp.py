"""Training in several processes (DistributedDataParallel, gloo on CPU): two ranks of batch 2
take the same steps as one process of batch 4, the ranks end with the same weights, rank 0's
checkpoint resumes under torchrun, and bad --nproc / a failing rank give one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pathoseg.cli import main
from pathoseg.data import load_dataset
from pathoseg.data.cache import load_scaled
from pathoseg.data.splits import make_split
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.data.targets import head_targets
from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.engine.distributed import (
    SINGLE,
    Ranks,
    _root_cause,
    available_slots,
    free_port,
    launch,
    per_rank_batch,
    process_group,
    rank_seed,
    ranks_from_env,
    wrap_model,
)
from pathoseg.engine.train import SegmentationLoss, TrainConfig, fit
from pathoseg.errors import PathosegError
from pathoseg.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
CROP = 64
STEPS = 3
MODEL = ModelConfig("lite0", weights="none")  # contour head: gland and contour channels, both with Dice


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four fixed crops; the last two without glands, so rank 1's half has no foreground
    (a per-rank Dice would drop its term there, the global batch's does not)."""
    images, targets, valids = [], [], []
    for i in range(4):
        image, labels = synthetic_sample(40 + i, SyntheticConfig(size=(CROP, CROP)))
        if i >= 2:
            labels = np.zeros_like(labels)
        target, valid = head_targets(labels, ("gland", "contour"))
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append(torch.from_numpy(target))
        valids.append(torch.from_numpy(valid))
    return torch.stack(images), torch.stack(targets), torch.stack(valids)


def seeded_model() -> torch.nn.Module:
    """The model :func:`take_steps` starts from, the same in every process."""
    torch.manual_seed(0)
    return build_model(MODEL)


def take_steps(ranks: Ranks) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """STEPS SGD steps on this rank's share of :func:`fixed_batch`, built as ``fit`` builds
    them (DDP wrap, the loss for these ranks). Eval mode: BatchNorm on its running statistics
    and no dropout, the two things that differ on purpose between 2 x 2 crops and 1 x 4 on CPU
    (per-rank batch statistics, per-rank dropout masks). Plain SGD: Adam divides by each
    weight's gradient magnitude, so where a gradient is ~0 float summation-order noise turns
    into whole +-lr steps; SGD keeps the weights a faithful record of the gradients. Returns
    the first step's gradients and the final weights."""
    model = seeded_model()
    net = wrap_model(model, CPU) if ranks.distributed else model
    net.eval()
    share = 4 // ranks.world_size
    x, y, valid = (t[ranks.rank * share:(ranks.rank + 1) * share] for t in fixed_batch())
    loss_fn = SegmentationLoss(model.head.channels, ranks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    first_grads: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        loss = loss_fn(net(x).float(), y, valid)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            first_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return first_grads, {k: v.clone() for k, v in model.state_dict().items()}


def rank_job(data_root: str, out: str) -> None:
    """Each rank: the fixed-batch steps, then ``fit`` for two epochs on the synthetic data;
    saves what it holds afterwards for the test to compare. Rank 0 also takes the steps as one
    process on all four crops (here rather than in pytest's process: one thread, as fast as
    it gets on a busy machine)."""
    ranks = ranks_from_env()
    with process_group(ranks, CPU):
        grads, weights = take_steps(ranks)
        single = take_steps(SINGLE) if ranks.is_main else None
        data = load_dataset(data_root)
        split = make_split(data, "random", seed=0, val_fraction=0.2)
        cfg = TrainConfig(model=MODEL, epochs=2, batch_size=4, crop=CROP, progress=False)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model)
        pairs = load_scaled(data.subset(split.train), 1.0, False)
        val = load_scaled(data.subset(split.val), 1.0, False) if ranks.is_main else []
        state = fit(model, pairs, val, cfg, CPU, ranks=ranks)
        torch.save({"grads": grads, "weights": weights, "fit": model.state_dict(), "history": state.history,
                    "single": single, "initial": seeded_model().state_dict()}, Path(out) / f"rank{ranks.rank}.pt")


def fail_on_rank_1(kind: str) -> None:
    ranks = ranks_from_env()
    with process_group(ranks, CPU):
        if ranks.rank == 1:
            if kind == "error":
                raise PathosegError("bad tile", "x.png")
            os._exit(3)  # a crash without a word, as an out-of-memory kill would be
        torch.distributed.barrier()  # rank 0 would wait here for ever without the launcher


@pytest.fixture(scope="module")
def two_ranks(synth_dir, tmp_path_factory) -> dict[int, dict]:
    out = tmp_path_factory.mktemp("ranks")
    launch(2, rank_job, str(synth_dir), str(out))
    return {r: torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)}


def test_two_ranks_of_two_take_the_steps_of_one_process_of_four(two_ranks):
    grads, weights = two_ranks[0]["single"]
    for rank in (0, 1):
        got = two_ranks[rank]
        assert got["grads"].keys() == grads.keys()
        for name, g in grads.items():
            # DDP's average of per-rank gradients (with the Dice sums taken over both ranks)
            # is the gradient on the global batch, up to float summation order.
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
        for name, w in weights.items():
            torch.testing.assert_close(got["weights"][name], w, rtol=1e-4, atol=1e-5, msg=name)
    moved = max((weights[k] - two_ranks[0]["initial"][k]).abs().max().item() for k in grads)
    assert moved > 1e-4  # the steps did change the weights, so the comparison above means something


def test_ranks_hold_identical_weights_after_fit(two_ranks):
    first, second = two_ranks[0]["fit"], two_ranks[1]["fit"]
    assert first.keys() == second.keys()
    for name in first:  # parameters by DDP, BatchNorm statistics by the end-of-epoch average
        assert torch.equal(first[name], second[name]), name
    assert two_ranks[0]["history"] == two_ranks[1]["history"]  # rank 0's clock and validation for all
    assert len(two_ranks[0]["history"]) == 2 and np.isfinite(two_ranks[0]["history"][-1]["val_iou"])


def test_nproc_then_torchrun_resume(synth_dir, tmp_path, capsys):
    out = tmp_path / "run"
    # A budget of a few milliseconds stops the 2-epoch run after its first epoch (rank 0's clock
    # decides for both ranks; were they to disagree, one would wait for the other for ever).
    args = ["train", "--data", str(synth_dir), "--split", "random", "--out", str(out), "--model", "lite0",
            "--weights", "none", "--crop", str(CROP), "--batch-size", "4", "--epochs", "2", "--budget", "0.0001"]
    assert main([*args, "--nproc", "2"]) == 0
    assert "best validation IoU" in capsys.readouterr().out
    first = load_checkpoint(out / "last.pt")
    assert first.epoch == 1 and (out / "best.pt").is_file() and len((out / "history.csv").read_text().splitlines()) == 2

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "pathoseg", *args, "--resume"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "error" in line.lower()][:5]
    assert done.stdout.count("best validation IoU") == 1  # rank 0 speaks for the run
    second = load_checkpoint(out / "last.pt")
    assert second.epoch == 2
    assert second.history[0] == first.history[0]  # continued from epoch 1, not started over
    assert second.train_config["batch_size"] == 4


def test_bad_nproc_is_one_line_before_anything_is_written(synth_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(synth_dir), "--out", str(out), "--device", "cpu"]
    cores = available_slots(CPU)[0]
    assert main([*base, "--nproc", str(cores + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pathoseg: error: --nproc {cores + 1}: more processes than the {cores} CPU cores on this machine"
    assert main([*base, "--nproc", "2", "--batch-size", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--batch-size 3 is the global batch" in err and "\n" not in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([*base, "--nproc", "0"])


def test_nproc_under_torchrun_is_refused(synth_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--data", str(synth_dir), "--out", str(tmp_path / "run"), "--nproc", "2"]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_torchrun_with_more_processes_than_cores_is_refused(synth_dir, tmp_path, monkeypatch, capsys):
    too_many = available_slots(CPU)[0] + 1
    for name, value in {"RANK": 0, "WORLD_SIZE": too_many, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": too_many}.items():
        monkeypatch.setenv(name, str(value))
    out = tmp_path / "run"
    assert main(["train", "--data", str(synth_dir), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pathoseg: error: torchrun's --nproc_per_node {too_many}: more processes than")
    assert not out.exists()


@pytest.mark.parametrize(("kind", "message"), [
    ("error", "rank 1/2: x.png: bad tile"),
    ("crash", "training process 1 of 2 failed: process 1 terminated with exit code 3"),
])
def test_a_failing_rank_brings_the_others_down(kind, message):
    with pytest.raises(PathosegError) as caught:
        launch(2, fail_on_rank_1, kind)
    assert str(caught.value) == message


def test_a_silent_crash_is_the_cause_even_when_a_peer_reports_first(tmp_path):
    # The race CI once lost: rank 1 dies without a word, rank 0 writes "connection reset" and
    # exits before spawn looks at rank 1, so spawn names rank 0 first.
    (tmp_path / "rank0.json").write_text(json.dumps({
        "message": "RuntimeError: Read error: Connection reset by peer", "input": False, "time": 2.0,
        "traceback": "..."}))
    processes = [SimpleNamespace(exitcode=1), SimpleNamespace(exitcode=3)]
    assert _root_cause(processes, 0, tmp_path) == (
        "training process 1 of 2 failed: process 1 terminated with exit code 3", None)
    # A rank that spawn stopped (negative code) is not a cause; the peer's report stands.
    processes = [SimpleNamespace(exitcode=1), SimpleNamespace(exitcode=-signal.SIGTERM)]
    assert _root_cause(processes, 0, tmp_path)[0] == "RuntimeError: Read error: Connection reset by peer"
    # Killed first by a signal (out of memory) without a report: named with the signal.
    assert _root_cause([SimpleNamespace(exitcode=-signal.SIGKILL), SimpleNamespace(exitcode=1)], 0, tmp_path / "none") \
        == ("training process 0 of 2 failed: process 0 terminated with signal SIGKILL", None)
    # A problem with the input outranks everything.
    (tmp_path / "rank1.json").write_text(json.dumps({"message": "rank 1/2: x.png: bad tile", "input": True,
                                                     "time": 3.0, "traceback": "tb"}))
    assert _root_cause([SimpleNamespace(exitcode=1), SimpleNamespace(exitcode=1)], 0, tmp_path) == (
        "rank 1/2: x.png: bad tile", "tb")


def test_ranks_from_the_environment():
    assert ranks_from_env({}) == SINGLE
    ranks = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert ranks == Ranks(3, 4, 1, 2, distributed=True) and not ranks.is_main
    with pytest.raises(PathosegError, match="RANK='x'"):
        ranks_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(PathosegError, match="inconsistent"):
        ranks_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_per_rank_batch_and_seeds():
    assert per_rank_batch(8, 2) == 4 and per_rank_batch(8, 1) == 8
    with pytest.raises(PathosegError, match="multiple of 3"):
        per_rank_batch(8, 3)
    assert rank_seed(7, 0) == 7  # one process draws what it drew before ranks existed
    assert len({rank_seed(7, r) for r in range(4)}) == 4
