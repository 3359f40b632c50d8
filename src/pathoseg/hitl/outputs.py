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
        keys = ("iou", "f1", "label_iou", "seconds", "cum_hours", "train_s", "round_s", "activated")
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
                # a round as a user waits for it: training plus the gate (older records: training)
                q["round_s"][i, j] = r.get("round_s", r["train_s"])
                q["activated"][i, j] = float(r.get("activated", True))
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


def _plot(data: dict[str, dict[str, np.ndarray]], x_key: str | None, xlabel: str, title: str,
          y_key: str = "iou", ylabel: str = "test IoU (pooled)"):
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for s, q in data.items():
        y = np.nanmean(q[y_key], axis=0)
        x = np.arange(len(y)) if x_key is None else np.nanmean(q[x_key], axis=0)
        ax.plot(x, y, marker="o", label=s)
    if x_key is None:
        ax.set_xticks(range(len(next(iter(data.values()))[y_key][0])))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def headline(data: dict[str, dict[str, np.ndarray]], reference: str = "oracle", within: float = 0.01) -> dict | None:
    """The least effort that ends within ``within`` pooled test IoU of ``reference``'s final
    round (means over seeds), and that effort as a share of the reference's."""
    if reference not in data:
        return None
    final = {s: float(np.nanmean(q["iou"][:, -1])) for s, q in data.items()}
    hours = {s: float(np.nanmean(q["cum_hours"][:, -1])) for s, q in data.items()}
    close = [s for s in data if s != reference and final[s] >= final[reference] - within]
    best = min(close, key=lambda s: hours[s]) if close else None
    return {"reference": reference, "within_iou": within, "reference_final_iou": final[reference],
            "reference_hours": hours[reference], "strategy": best,
            "final_iou": final[best] if best else None, "hours": hours[best] if best else None,
            "share_of_reference_effort": hours[best] / hours[reference] if best and hours[reference] else None,
            "final_iou_by_strategy": final, "hours_by_strategy": hours}


def describe_headline(h: dict | None) -> str:
    if h is None:
        return "no oracle strategy in this study: no headline"
    if h["strategy"] is None:
        return (f"no strategy ended within {h['within_iou']} test IoU of the {h['reference']} "
                f"({h['reference_final_iou']:.4f} after {h['reference_hours']:.2f} h)")
    return (f"least effort within {h['within_iou']} test IoU of the {h['reference']}: {h['strategy']}, "
            f"{h['final_iou']:.4f} vs {h['reference_final_iou']:.4f} for {h['hours']:.2f} h vs "
            f"{h['reference_hours']:.2f} h ({h['share_of_reference_effort']:.0%} of the {h['reference']}'s effort)")


def results_json(data: dict[str, dict[str, np.ndarray]], seeds: list[int], command: str) -> dict:
    """The study's numbers per strategy, seed and round (round 0, the shared model, first)."""
    def rows(a: np.ndarray) -> list[list[float | None]]:
        return [[None if np.isnan(v) else float(v) for v in row] for row in a]

    return {"command": command, "seeds": seeds,
            "strategies": {s: {"test_iou": rows(q["iou"]), "object_f1": rows(q["f1"]),
                               "label_iou": rows(q["label_iou"]), "effort_hours": rows(q["cum_hours"]),
                               "train_seconds": rows(q["train_s"]), "round_seconds": rows(q["round_s"]),
                               "activated": rows(q["activated"])} for s, q in data.items()},
            "median_warm_round_seconds": median_warm_round(data),
            "headline": headline(data)}


def median_warm_round(data: dict[str, dict[str, np.ndarray]]) -> float | None:
    """The median seconds of a warm round (rounds 1 on: training plus the gate) over every
    strategy and seed."""
    values = np.concatenate([q["round_s"][:, 1:].ravel() for q in data.values()]) if data else np.array([])
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def write_study_outputs(records: list[dict], cfg: StudyConfig, out: Path, command: str = "",
                        json_path: Path | None = None) -> dict[str, str]:
    names = [s.name for s in cfg.strategies]
    data = series(records, names, cfg.rounds)
    tables = {
        "test IoU": table_rows(data, "iou"),
        "test object F1": table_rows(data, "f1"),
        "label quality (IoU of training labels vs ground truth)": table_rows(data, "label_iou"),
        "cumulative human effort (hours)": table_rows(data, "cum_hours", digits=2),
        "seconds per round (training + gate)": table_rows(data, "round_s", digits=0),
        "candidates activated by the gate (share of seeds)": table_rows(data, "activated", digits=2),
    }
    write_json(out / "hitl.json", {"config": asdict(cfg), "records": records})
    results = results_json(data, sorted({r["seed"] for r in records}), command)
    write_json(out / "results.json", results)
    if json_path is not None:
        write_json(json_path, results)
    summary = describe_headline(results["headline"])
    md = f"**Headline:** {summary}\n\n"
    md += "".join(f"### {title}\n\n{markdown(rows)}\n" for title, rows in tables.items())
    write_text(out / "tables.md", md)
    report = Report("pathoseg human-in-the-loop study")
    report.add_table("Strategies", [{"strategy": s.name, "labels": s.describe()} for s in cfg.strategies])
    for title, rows in tables.items():
        report.add_table(title, rows)
    pictures = {
        "Test IoU by round": _plot(data, None, "round", "Test IoU by round"),
        "Test IoU against human effort": _plot(data, "cum_hours", "cumulative human effort (hours)",
                                               "Test IoU against effort"),
        "Test object F1 against human effort": _plot(data, "cum_hours", "cumulative human effort (hours)",
                                                     "Test object F1 against effort", "f1", "test object F1"),
    }
    files = ("iou_by_round.png", "iou_by_effort.png", "f1_by_effort.png")
    for (title, fig), name in zip(pictures.items(), files, strict=True):
        report.add_image(title, save_figure(fig, out / name).read_bytes())
    report.footer = (f"{summary}. {cfg.seeds} seed(s), {cfg.rounds} rounds, selection {cfg.selection}, "
                     f"retrain {cfg.retrain}; effort from the simulated pathologist's cost model (docs/hitl.md).")
    report.write(out / "report.html")
    return {"headline": summary + "\n"} | {title: markdown(rows) for title, rows in tables.items()}
