"""Compares the jobs of a sweep: `python -m llmops.compare DIR [--metric M]`.

DIR is a multirun folder (DIR/0, DIR/1, ... each with metrics.json, manifest.json and
.hydra/overrides.yaml) or any folder of single runs. Prints a leaderboard (best first, swept
parameters as columns, gates), writes DIR/comparison.csv, DIR/comparison.png (the metric against
each swept axis; the training loss curves of all points) and DIR/report.html (the same in a
browser, sortable; llmops.report) and names the best point as the command that reproduces it.
With W&B online, `--wandb PROJECT --group G` reads the same from the W&B API.

A run whose metrics.json, manifest.json or reports cannot be read (not UTF-8, not strict JSON,
nested deeper than limits.json_depth, not the shape llmops writes) is skipped with one line on
stderr naming the file and why; the others are compared.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from llmops.report import write_sweep_report
from llmops.tracking.jobs import is_noise
from llmops.tracking.leaderboard import (  # noqa: F401  (compare's names, as they always were)
    Unreadable,
    find_runs,
    label,
    lower_is_better,
    metric_of,
    natural_key,
    rank,
    row_from_run_dir,
    swept_columns,
)


def row_from_wandb_run(run: Any) -> dict[str, Any]:
    """Builds one leaderboard row from a `wandb.Api()` run logged by llmops' W&B sink."""
    cfg = dict(run.config or {})
    meta = cfg.get("llmops") or {}
    summary = dict(run.summary or {})
    row: dict[str, Any] = {
        "run_dir": getattr(run, "url", None) or run.id,
        "status": summary.get("status") or getattr(run, "state", None),
        "params": {k: v for k, v in (meta.get("params") or {}).items() if not is_noise(k)},
        "swept": list(meta.get("swept") or []),
        "command": meta.get("command") or "",
        "method": (cfg.get("train") or {}).get("method") if isinstance(cfg.get("train"), dict)
        else None,
        "gates_passed": summary.get("gates/passed"),
        "failed_gates": sorted(k.split("/")[1] for k, v in summary.items()
                               if k.startswith("gates/") and k.endswith("/passed")
                               and k != "gates/passed" and v is False),
        "final_loss": summary.get("train/final_loss"),
        "eval_loss": summary.get("train/eval_loss"),
        "train_seconds": summary.get("train/train_runtime_s"),
        "steps": summary.get("train/steps"),
        "loss_curve": [(h["train/step"], h["train/loss"]) for h in
                       run.scan_history(keys=["train/step", "train/loss"])
                       if h.get("train/loss") is not None],
    }
    for part in ("tuned", "base", "deltas"):
        prefix = f"eval/{part}/"
        row.update({f"{part}.{k[len(prefix):]}": v for k, v in summary.items()
                    if k.startswith(prefix) and "/" not in k[len(prefix):]
                    and isinstance(v, int | float) and not isinstance(v, bool)})
    row["run"] = getattr(run, "name", None) or run.id
    return row


def _gates(row: dict[str, Any]) -> str:
    if row.get("gates_passed") is None:
        return "-"
    return "pass" if row["gates_passed"] else "FAIL " + ",".join(row["failed_gates"])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def print_table(rows: list[dict[str, Any]], swept: list[str], metric: str) -> None:
    """Prints the leaderboard with rich."""
    from rich.table import Table

    from llmops.compiler.render import plain_console

    table = Table(title=f"leaderboard: {len(rows)} runs, best first by {metric}")
    for col in ("#", "run", "method", *swept, metric, "base", "Δ", "final loss", "train s",
                "gates", "status"):
        table.add_column(col, justify="right" if col not in ("run", "gates", "status") else "left")
    name = metric.removeprefix("tuned.")
    for i, r in enumerate(rows, 1):
        table.add_row(str(i), r["run"], str(r.get("method") or "-"),
                      *[str(r["params"].get(k, "-")) for k in swept],
                      _fmt(metric_of(r, metric)), _fmt(r.get(f"base.{name}")),
                      _fmt(r.get(f"deltas.{name}")), _fmt(r.get("final_loss")),
                      _fmt(r.get("train_seconds")), _gates(r), str(r.get("status")))
    plain_console(160).print(table)  # overrides like q=[f16] as typed


def write_csv(rows: list[dict[str, Any]], swept: list[str], metric: str, path: Path) -> None:
    """Writes the leaderboard as CSV (one row per run, best first)."""
    metric_cols = sorted({k for r in rows for k in r if k.split(".")[0] in
                          ("tuned", "base", "deltas", "pref")})
    others = [c for c in metric_cols if c not in (metric, f"tuned.{metric}")]
    cols = ["rank", "run", "status", "method", *swept, metric, *others,
            "gates_passed", "failed_gates", "final_loss", "eval_loss", "train_seconds", "steps",
            "command", "run_dir"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, r in enumerate(rows, 1):
            vals = {"rank": i, **{k: r["params"].get(k, "") for k in swept},
                    metric: metric_of(r, metric), "failed_gates": ";".join(r["failed_gates"])}
            w.writerow([vals[c] if c in vals else r.get(c, "") for c in cols])


def write_png(rows: list[dict[str, Any]], swept: list[str], metric: str, path: Path) -> None:
    """Plots the metric against each swept axis, and all training loss curves, into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = swept or ["run"]
    fig, axes = plt.subplots(1, len(axes_keys) + 1, figsize=(5 * (len(axes_keys) + 1), 4))
    for ax, key in zip(axes, axes_keys, strict=False):
        value = (lambda r: r["run"]) if key == "run" else (lambda r, k=key: r["params"].get(k))
        xs = sorted({str(value(r)) for r in rows}, key=natural_key)
        numeric = all(natural_key(x)[0] == 0 for x in xs)
        series: dict[str, list[tuple[Any, float]]] = {}
        for r in rows:
            y = metric_of(r, metric)
            if y is None:
                continue
            others = ",".join(f"{k}={r['params'].get(k)}" for k in swept if k != key)
            x = float(value(r)) if numeric else xs.index(str(value(r)))
            series.setdefault(others or metric, []).append((x, y))
        for name, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        if numeric and len(xs) > 1 and min(map(float, xs)) > 0 and \
                max(map(float, xs)) / min(map(float, xs)) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(xs)), xs, rotation=30 if len(xs) > 4 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    ax = axes[-1]
    for r in rows:
        if r["loss_curve"]:
            ax.plot(*zip(*r["loss_curve"], strict=True), label=label(r, swept), linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss, all points")
    ax.grid(alpha=0.3)
    if 0 < len(rows) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(rows: list[dict[str, Any]], out_dir: Path, metric: str = "exact_match",
            ascending: bool | None = None, source: Path | str | None = None) -> dict[str, Any]:
    """Ranks rows, prints the leaderboard, writes comparison.csv/.png and the sweep's report.html
    (llmops.report); returns the best row. source names where the rows come from (default:
    out_dir)."""
    swept = swept_columns(rows)
    ranked = rank(rows, metric, ascending)
    print_table(ranked, swept, metric)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(ranked, swept, metric, out_dir / "comparison.csv")
    write_png(ranked, swept, metric, out_dir / "comparison.png")
    report = write_sweep_report(ranked, out_dir, source or out_dir, metric, ascending)
    best = ranked[0]
    print(f"wrote {out_dir / 'comparison.csv'}, {out_dir / 'comparison.png'} and {report}")
    print(f"best: {best['run']} ({metric} = {_fmt(metric_of(best, metric))}). Reproduce it with:")
    print(f"  {best['command']}")
    return best


def _wandb_rows(project: str, group: str | None, entity: str | None) -> list[dict[str, Any]]:
    try:
        import wandb
    except ImportError:
        raise SystemExit("--wandb needs wandb: pip install 'llmops[tracking]'.") from None
    path = f"{entity}/{project}" if entity else project
    runs = wandb.Api().runs(path, filters={"group": group} if group else None)
    return [row_from_wandb_run(r) for r in runs]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m llmops.compare`."""
    p = argparse.ArgumentParser(prog="python -m llmops.compare", description=__doc__.split(
        "\n")[0])
    p.add_argument("dir", nargs="?", type=Path, help="multirun folder, or a folder of runs")
    p.add_argument("--metric", default="exact_match",
                   help="rank by this (tuned metric name, or e.g. final_loss, base.exact_match)")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="ascending", action="store_true", default=None,
                       help="smaller is better (the default for losses and times)")
    order.add_argument("--descending", dest="ascending", action="store_false")
    p.add_argument("--wandb", metavar="PROJECT", help="read the runs from the W&B API instead")
    p.add_argument("--group", help="W&B group (the sweep) with --wandb")
    p.add_argument("--entity", help="W&B entity with --wandb")
    p.add_argument("--out", type=Path,
                   help="where to write comparison.csv/.png and report.html (default: DIR)")
    p.add_argument("--json-depth", type=int, help="deepest nesting of a run's JSON files "
                   "(default: limits.json_depth's default)")
    args = p.parse_args(argv)
    if args.wandb:
        rows = _wandb_rows(args.wandb, args.group, args.entity)
        out = args.out or args.dir or Path("outputs") / "compare" / (args.group or args.wandb)
        where = f"W&B project {args.wandb}" + (f", group {args.group}" if args.group else "")
    elif args.dir is None:
        p.error("give a multirun folder (DIR), or --wandb PROJECT --group G")
    else:
        if not args.dir.is_dir():
            print(f"compare: {args.dir} is not a folder. Give a multirun folder, e.g. "
                  "outputs/multirun/DATE/TIME.", file=sys.stderr)
            return 2
        rows, out = find_runs(args.dir, args.json_depth), args.out or args.dir
        where = str(args.dir)
    if not rows:
        print(f"compare: no runs found in {where} (a run folder holds metrics.json or "
              "manifest.json).", file=sys.stderr)
        return 2
    compare(rows, out, args.metric, args.ascending, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
