"""`python -m llmops.report DIR [--metric M]`: rebuilds DIR/report.html.

DIR is a run folder (it holds manifest.json or plan.json) or a sweep folder (its jobs hold them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmops.errors import EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m llmops.report`."""
    p = argparse.ArgumentParser(prog="python -m llmops.report",
                                description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="a run folder, or a sweep (multirun) folder")
    p.add_argument("--metric", default="exact_match",
                   help="a sweep: rank by this (tuned metric name, or e.g. final_loss)")
    args = p.parse_args(argv)
    from llmops.report import write_run_report, write_sweep_report
    from llmops.report.render import ReportTooLarge

    if not args.dir.is_dir():
        print(f"report: {args.dir} is not a folder. Give a run folder (outputs/runs/DATE/TIME) "
              "or a sweep folder (outputs/multirun/DATE/TIME).", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if (args.dir / "manifest.json").is_file() or (args.dir / "plan.json").is_file():
            path = write_run_report(args.dir)
        else:
            from llmops.tracking.leaderboard import find_runs

            rows = find_runs(args.dir)
            if not rows:
                print(f"report: no run found in {args.dir} (a run folder holds manifest.json; a "
                      "sweep folder holds run folders).", file=sys.stderr)
                return EXIT_CONFIG
            path = write_sweep_report(rows, args.dir, args.dir, args.metric)
    except ReportTooLarge as exc:
        print(f"report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
