"""The command line: `python -m llmops [overrides]` (a Hydra app with a pre-flight check).

The pre-flight composes, validates and compiles every point before Hydra launches anything, so any
config problem, Hydra's own included, exits with code 2 and a readable message, and writes nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from llmops.errors import EXIT_CONFIG, EXIT_INTERRUPTED, ConfigError, LlmopsError, Problem

log = logging.getLogger("llmops")

# Hydra flags after which llmops does not pre-flight (they do not run the pipeline, or change
# where configs come from).
_PASSTHROUGH = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
                "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--package", "-p", "--resolve"}


def to_plain(cfg: Any) -> dict[str, Any]:
    """Resolves a composed DictConfig into plain containers, dropping the hydra node."""
    from omegaconf import DictConfig, OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig) and "hydra" in cfg:
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        first = str(exc).splitlines()[0]
        raise ConfigError([Problem(str(key), f"cannot be resolved: {first}")]) from None


def check(overrides: list[str]) -> Any:
    """Composes, validates and compiles one point; returns its Plan or raises ConfigError."""
    from llmops.compiler.compile import compile_plan
    from llmops.config.compose import compose
    from llmops.config.validate import validate
    from llmops.env import detect

    cfg = compose(overrides)
    app = validate(to_plain(cfg))
    return compile_plan(app, detect())


def preflight(argv: list[str]) -> None:
    """Checks every point the command would run; raises ConfigError listing all problems."""
    overrides = [a for a in argv if not a.startswith("-")]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if not multirun:
        check(overrides)
        return
    from llmops.sweep import expand_points

    problems: list[Problem] = []
    for point in expand_points(overrides):
        try:
            check(point)
        except ConfigError as exc:
            label = " ".join(o for o in point if o not in overrides) or "base"
            problems += [Problem(p.key, f"{p.message} [sweep point: {label}]")
                         for p in exc.problems]
    if problems:
        raise ConfigError(problems)


def execute(cfg: Any, run_dir: Path | None = None, overrides: list[str] | None = None) -> Any:
    """Runs the pipeline for one composed config (the pure task function behind the CLI).

    Returns:
        The tuned model's exact match (the metric sweepers optimise), or None when nothing ran.
    """
    import json

    from rich.console import Console

    from llmops.compiler.compile import compile_plan
    from llmops.compiler.render import plan_table, summary_table
    from llmops.config.validate import validate
    from llmops.env import detect
    from llmops.runner.run import run_plan

    if run_dir is None or overrides is None:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        run_dir = run_dir or Path(hc.runtime.output_dir)
        overrides = overrides if overrides is not None else list(hc.overrides.task)
    app = validate(to_plain(cfg))
    plan = compile_plan(app, detect())
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(plan_table(plan))
    if app.dry_run:
        plan.write(Path(run_dir) / "plan.json")
        if any(s.kind == "compute" for s in plan.stages):
            from llmops.compiler.render import compute_table
            from llmops.runner.files import write_json_atomic
            from llmops.stages.compute import plan as compute_plan

            estimate = compute_plan(plan.stage("compute").params)
            write_json_atomic(Path(run_dir) / "compute_plan.json", estimate)
            console.print(compute_table(estimate))
        console.print(f"dry run: nothing ran. Plan written to {Path(run_dir) / 'plan.json'}")
        return None
    manifest = run_plan(plan, Path(run_dir), overrides)
    report_path = Path(run_dir) / "eval_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    for renderable in summary_table(manifest, report):
        console.print(renderable)
    console.print(f"run folder: {run_dir}")
    if report:
        return report.get("tuned", {}).get("exact_match")
    return None


def _fail(exc: LlmopsError) -> None:
    print(f"\n{exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _hydra_app() -> None:
    import hydra

    @hydra.main(config_path="pkg://llmops.conf", config_name="config", version_base="1.3")
    def app(cfg: Any) -> Any:
        try:
            return execute(cfg)
        except LlmopsError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            print("\ninterrupted: finished stages stay in the store; rerun to resume.",
                  file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    app()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m llmops` and the `llmops` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.split("=")[0] in _PASSTHROUGH for a in args):
        try:
            preflight(args)
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            sys.exit(EXIT_CONFIG)
    sys.argv = [sys.argv[0], *args]
    _hydra_app()
