"""The study's tables, plots and report: strategies x rounds, mean ± std over seeds."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pathoseg.hitl.study import StudyConfig
from pathoseg.io import write_json, write_text
from pathoseg.pipeline.evaluation import headline_part
from pathoseg.viz.figures import save_figure
from pathoseg.viz.report import Report


def series(records: list[dict], strategies: list[str], rounds: int) -> dict[str, dict[str, np.ndarray]]:
    """strategy -> quantity -> array (seeds, rounds + 1); round 0 is the shared initial model."""
    seeds = sorted({r["seed"] for r in records})
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in strategies:
        keys = ("iou", "f1", "label_iou", "seconds", "cum_hours", "train_s")
        q = {k: np.full((len(seeds), rounds + 1), np.nan) for k in keys}
        for i, seed in enumerate(seeds):
            for r in records:
                if r["seed"] != seed or (r["round"] > 0 and r["strategy"] != s):
                    continue
                j = r["round"]
                head = r["test"][headline_part(r["test"])]
                q["iou"][i, j] = head["iou_pooled"]
                q["f1"][i, j] = head["f1"]
                q["label_iou"][i, j] = r["label_iou"]
                q["seconds"][i, j] = r["effort"]["seconds"] if j > 0 else 0.0
                q["train_s"][i, j] = r["train_s"]
            q["cum_hours"][i] = np.nancumsum(q["seconds"][i]) / 3600
        out[s] = q
    return out


def table_rows(data: dict[str, dict[str, np.ndarray]], key: str, digits: int = 4) -> list[dict]:
    rows = []
    for s, q in data.items():
        row = {"strategy": s}
        for j in range(q[key].shape[1]):
            col = q[key][:, j]
            mean = float(np.nanmean(col))
            cell = f"{mean:.{digits}f}"
            if col.size > 1:
                cell += f" ± {float(np.nanstd(col, ddof=1)):.{digits}f}"
            row[f"round {j}"] = cell
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(data: dict[str, dict[str, np.ndarray]], x_key: str | None, xlabel: str, title: str):
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for s, q in data.items():
        y = np.nanmean(q["iou"], axis=0)
        x = np.arange(len(y)) if x_key is None else np.nanmean(q[x_key], axis=0)
        ax.plot(x, y, marker="o", label=s)
    if x_key is None:
        ax.set_xticks(range(len(next(iter(data.values()))["iou"][0])))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test IoU (pooled)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def write_study_outputs(records: list[dict], cfg: StudyConfig, out: Path) -> dict[str, str]:
    names = [s.name for s in cfg.strategies]
    data = series(records, names, cfg.rounds)
    tables = {
        "test IoU": table_rows(data, "iou"),
        "test object F1": table_rows(data, "f1"),
        "label quality (IoU of training labels vs ground truth)": table_rows(data, "label_iou"),
        "cumulative human effort (hours)": table_rows(data, "cum_hours", digits=2),
        "training seconds per round": table_rows(data, "train_s", digits=0),
    }
    write_json(out / "hitl.json", {"config": asdict(cfg), "records": records})
    md = "".join(f"### {title}\n\n{markdown(rows)}\n" for title, rows in tables.items())
    write_text(out / "tables.md", md)
    report = Report("pathoseg human-in-the-loop study")
    report.add_table("Strategies", [{"strategy": s.name, "labels": s.describe()} for s in cfg.strategies])
    for title, rows in tables.items():
        report.add_table(title, rows)
    by_round = save_figure(_plot(data, None, "round", "Test IoU by round"), out / "iou_by_round.png")
    by_effort = save_figure(_plot(data, "cum_hours", "cumulative human effort (hours)", "Test IoU against effort"),
                            out / "iou_by_effort.png")
    report.add_image("Test IoU by round", by_round.read_bytes())
    report.add_image("Test IoU against human effort", by_effort.read_bytes())
    report.footer = (f"{cfg.seeds} seed(s), {cfg.rounds} rounds, selection {cfg.selection}, retrain {cfg.retrain}; "
                     "effort from the simulated annotator's cost model (docs/hitl.md).")
    report.write(out / "report.html")
    return {title: markdown(rows) for title, rows in tables.items()}
