"""The pre-flight: compose, validate and compile every point before Hydra launches anything.

Any config problem, Hydra's own included, raises one ConfigError listing every problem, so the
command exits with code 2 and a readable message, and writes nothing. A real run (not a dry run)
of a hub model then checks that the model can be had (reachability.py), also exit 2 if not.

Each point is validated and resolved once per process: what the pre-flight checked (a `Checked`)
is handed to the job when Hydra runs it in the same process (job.py); a job a launcher moves to
another process or node (joblib, submitit) resolves its "auto" values there, once.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmops.errors import ConfigError, Problem

if TYPE_CHECKING:
    from llmops.config.hydra.command import Command
    from llmops.config.hydra.source import Source


@dataclass(frozen=True)
class Checked:
    """One point as the pre-flight validated, resolved and compiled it.

    Attributes:
        key: What a job in this process matches it by: (its plain config as canonical JSON, the
            environment it was resolved for).
        app: The validated config (llmops.config.schema.AppConfig).
        resolved: Its "auto" values, resolved for that environment (planning.resolve.Resolved).
        plan: The compiled Plan.
    """

    key: tuple[str, Any]
    app: Any
    resolved: Any
    plan: Any


def point_key(plain: dict[str, Any], env: Any) -> tuple[str, Any]:
    """Returns what identifies a validate-and-resolve: the plain config and the environment."""
    import json

    return json.dumps(plain, sort_keys=True, separators=(",", ":"), default=repr), env


def to_plain(cfg: Any) -> dict[str, Any]:
    """Resolves a composed DictConfig into plain containers, dropping the hydra node.

    Secrets stay out: `${oc.env:NAME}` of a secret-looking NAME resolves to its own text, and a
    secret's value found anywhere is replaced by that text (llmops.config.hydra.secrets).
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from llmops.config.hydra.secrets import redact, secrets_unresolved

    try:
        with secrets_unresolved():
            if isinstance(cfg, DictConfig):
                plain = {key: _plain_value(cfg, key) for key in cfg if key != "hydra"}
            else:
                plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        first = str(exc).splitlines()[0]
        raise ConfigError([Problem(str(key), f"cannot be resolved: {first}")]) from None
    return redact(plain)  # type: ignore[no-any-return]


def _plain_value(cfg: Any, key: str) -> Any:
    """Returns cfg[key] resolved into plain containers, as OmegaConf.to_container(cfg) holds it
    ("???" where a value is missing): key by key, so the hydra node is neither copied nor read."""
    from omegaconf import MISSING, Container, OmegaConf

    if OmegaConf.is_missing(cfg, key):
        return MISSING
    value = cfg[key]
    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    return value


def check(overrides: list[str], source: Source | None = None) -> Any:
    """Composes, checks (hydra node included), validates and compiles one point.

    Returns:
        The point's Plan.

    Raises:
        ConfigError: Every problem found.
    """
    return _check(overrides, source).plan


def _check(overrides: list[str], source: Source | None = None) -> Checked:
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.hydra_checks import RUN_DIR, hydra_problems
    from llmops.config.hydra.source import DEFAULT

    # Composed with the hydra node, as plan_sweep does: the memoised composition is reused.
    cfg = compose(overrides, return_hydra_config=True, source=source or DEFAULT)
    hard = hydra_problems(cfg, RUN_DIR)
    try:
        checked = resolve_point(cfg)
    except ConfigError as exc:
        raise ConfigError(_merge(hard, exc.problems)) from None
    if hard:
        raise ConfigError(hard)
    model = model_to_load(cfg, checked.plan)
    if model:
        reachable(model, total_s=float(cfg.limits.http_total_seconds))
    return checked


#: Stage kinds that never load the model's weights (data only tries its tokenizer, offline).
NO_WEIGHTS = ("decide", "compute", "data")


def model_to_load(cfg: Any, plan: Any) -> str | None:
    """Returns the hub model (id or folder) a real run of the plan loads.

    None for a dry run, the tiny model, or a plan none of whose stages loads the weights (a
    data-only plan measures lengths with the cached tokenizer, or estimates them).
    """
    if cfg.dry_run or cfg.model.source != "hub":
        return None
    loads = any(s.kind not in NO_WEIGHTS for s in plan.stages)
    return str(cfg.model.hub_id) if loads else None


def reachable(*hub_ids: str, total_s: float) -> None:
    """Checks that each model's config, tokenizer and weights can be had, before any stage.

    Args:
        hub_ids: The models (model.hub_id) the plans load.
        total_s: How long one hub request may take in all (limits.http_total_seconds).

    Raises:
        ConfigError: Naming each model that cannot be had, with the fixes.
    """
    from llmops.cli.reachability import reachability_problems

    problems = [p for hub_id in dict.fromkeys(hub_ids)
                for p in reachability_problems(hub_id, total_s)]
    if problems:
        raise ConfigError(problems)


def _merge(first: list[Problem], more: list[Problem]) -> list[Problem]:
    """Adds the problems of `more` whose key `first` does not already report."""
    keys = {p.key for p in first}
    return first + [p for p in more if p.key not in keys]


def resolve_point(cfg: Any, env: Any = None,
                  handed: dict[tuple[str, Any], Checked] | None = None) -> Checked:
    """Validates and resolves one composed point, then compiles it.

    Args:
        cfg: The composed config (its hydra node, if any, is left out).
        env: The environment (llmops.env.Environment); detected when None.
        handed: Points the pre-flight checked in this process, by key: a match is not validated
            and resolved again (only compiled: its data files are hashed as they are now).

    Raises:
        ConfigError: Every problem found.
    """
    from llmops.compiler.compile import compile_plan
    from llmops.env import detect

    plain = to_plain(cfg)
    key = point_key(plain, env or detect())
    found = (handed or {}).get(key)
    if found is not None:
        app, resolved = found.app, found.resolved
    else:
        from llmops.config.validate import validate_and_resolve

        app, resolved = validate_and_resolve(plain, key[1])
    return Checked(key, app, resolved, compile_plan(app, resolved))


def preflight(argv: list[str]) -> Any:
    """Checks every point the command would run; raises ConfigError listing all problems.

    Returns:
        The Sweep for a multirun (named sweep or -m), else None. With skip_invalid=true, points
        that compose but fail validation are listed on stderr and left to skip themselves.
    """
    from llmops.config.hydra.command import parse_command

    command = parse_command(argv)
    if command.show_cfg:
        show_cfg_check(command)
        return None
    return _preflight(command)[0]


def show_cfg_check(command: Command) -> None:
    """Checks what `--cfg` prints: it must compose, and name nothing Hydra would run."""
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.hydra_checks import hydra_problems

    cfg = compose(command.overrides, return_hydra_config=True, source=command.source)
    problems = hydra_problems(cfg, dir_key=None)
    if problems:
        raise ConfigError(problems)


def _preflight(command: Command) -> tuple[Any, list[Checked]]:
    """Returns (the Sweep, or None for a single run; the points it checked, valid ones only)."""
    from llmops.cli.sweep import plan_sweep
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.hydra_checks import SWEEP_DIR, hydra_problems
    from llmops.env import detect

    overrides, source = command.overrides, command.source
    sweep = plan_sweep(overrides, command.multirun, source)
    if sweep is None:
        return None, [_check(overrides, source)]
    # The multirun's own composition: Hydra instantiates its callbacks, sweeper and launcher.
    own = compose(_fixed(overrides), return_hydra_config=True, source=source)
    hard = hydra_problems(own, SWEEP_DIR)
    if hard:
        raise ConfigError(hard)
    env = detect()
    # Jobs running at once share this machine's memory: each point is planned with its share, and
    # the jobs (started after this, inheriting the environment) plan with the same.
    from omegaconf import OmegaConf

    from llmops.env import CONCURRENT_JOBS_ENV, concurrent_jobs, shared_by

    launcher = OmegaConf.to_container(own.hydra.launcher, resolve=False) \
        if own.hydra.get("launcher") is not None else None
    jobs = concurrent_jobs(launcher, len(sweep.points), env.cpu_count)
    if jobs > 1:
        os.environ[CONCURRENT_JOBS_ENV] = str(jobs)
        env = shared_by(env, jobs)
    soft: list[Problem] = []
    checked: list[Checked] = []
    models: list[str | None] = []
    total_s = math.inf  # the smallest limits.http_total_seconds of the points
    for point in sweep.points:
        tag = f" [sweep point: {sweep.label(point)}]"
        try:  # a point's hydra node configures its job's logging: checked like the sweep's
            cfg = compose(point, return_hydra_config=True, source=source)
            problems = hydra_problems(cfg, dir_key=None, logs_in=SWEEP_DIR)
        except ConfigError as exc:  # Hydra could not even launch this point
            problems = exc.problems
        if problems:
            hard += [Problem(p.key, p.message + tag) for p in problems]
            continue
        try:
            checked.append(resolve_point(cfg, env))
        except ConfigError as exc:
            soft += [Problem(p.key, p.message + tag) for p in exc.problems]
            sweep.invalid.append(sweep.label(point))
            continue
        models.append(model_to_load(cfg, checked[-1].plan))
        total_s = min(total_s, float(cfg.limits.http_total_seconds))
    if hard or (soft and (not sweep.skip_invalid or len(sweep.invalid) == len(sweep.points))):
        raise ConfigError(hard + soft)
    reachable(*(m for m in models if m), total_s=total_s)
    if soft:
        print(f"skip_invalid: {len(sweep.invalid)} of {len(sweep.points)} sweep points are "
              f"invalid and will be skipped:\n" + "\n".join(f"  - {p}" for p in soft),
              file=sys.stderr)
    return sweep, checked


def _fixed(overrides: list[str]) -> list[str]:
    """Returns the overrides that are not sweeps (what Hydra's multirun composes itself with)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    return [o for o in overrides if not parser.parse_overrides([o])[0].is_sweep_override()]
