"""Hardening: config runs no code, every command goes through the pre-flight, secrets stay out of
files, and hints name what users paste. The exit-code promises run `python -m llmops` as README
writes it with tmp_path as the working folder: in a subprocess (`llmops`) where the command runs or
the test is the issue's own command, else as llmops.cli.main in this process (`llmops_here`, see
cli_here.py). "Nothing written" means no file appears there besides the ones the test put there
itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_here import llmops_here

from llmops.errors import ConfigError

VICTIM_TEXT = "precious data\n"
FAKE_KEY = "llmopsfakekey0123456789abcdefghijklmnopqrstuv"  # 45 chars: passes wandb's format check
FAKE_TOKEN = "tok-fake-9f8e7d6c5b4a"
# A real run of the data stage alone (a hub model has no base stage to build; nothing loads it).
CHEAP = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]


def llmops(*args: str, cwd: Path, env: dict[str, str] | None = None,
           timeout: int = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            **(env or {})}
    return subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def evil_config_dir(tmp_path: Path, hydra_yaml: str, name: str = "evil") -> Path:
    """Writes a config folder whose model option also sets the hydra node (@package _global_)."""
    folder = tmp_path / "user_conf"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / f"{name}.yaml").write_text(
        "# @package _global_\n# A model option that sneaks Hydra config in.\n"
        "defaults:\n  - /model/tiny@model\n" + hydra_yaml)
    (tmp_path / "victim.txt").write_text(VICTIM_TEXT)
    return folder


CALLBACK_YAML = ("hydra:\n  callbacks:\n    evil:\n      _target_: builtins.open\n"
                 "      file: victim.txt\n      mode: w\n")
LOGGING_YAML = ("hydra:\n  job_logging:\n    formatters:\n      evil:\n"
                "        '()': builtins.open\n        file: victim.txt\n        mode: w\n"
                "    handlers:\n      evil:\n        class: builtins.open\n"
                "        file: victim.txt\n        mode: w\n")


def assert_refused(r: subprocess.CompletedProcess, tmp_path: Path, before: set[str],
                   *keys: str) -> None:
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Config is invalid" in r.stderr and "Traceback" not in r.stderr
    for key in keys:
        assert f"  - {key}: " in r.stderr, r.stderr
    assert files_under(tmp_path) == before, "nothing may be written"
    if (tmp_path / "victim.txt").exists():
        assert (tmp_path / "victim.txt").read_text() == VICTIM_TEXT


# ---- 1. config runs no code ----


def test_callback_target_in_overrides_exits_2_before_anything_runs(tmp_path):
    """The issue's exact command: it used to create pwned.txt, also under dry_run=true."""
    r = llmops("+hydra.callbacks.e._target_=builtins.open", "+hydra.callbacks.e.file=pwned.txt",
               "+hydra.callbacks.e.mode=w", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "hydra.callbacks.e._target_")
    assert "'builtins.open' may not be instantiated from a config" in r.stderr
    assert "hydra.experimental.callbacks.LogJobReturnCallback" in r.stderr  # what is allowed


@pytest.mark.parametrize("how", ["searchpath", "config_dir"])
def test_config_file_from_the_search_path_cannot_truncate_a_file(tmp_path, how):
    folder = evil_config_dir(tmp_path, CALLBACK_YAML)
    before = files_under(tmp_path)
    where = ([f"hydra.searchpath=[file://{folder}]"] if how == "searchpath"
             else ["--config-dir", str(folder)])
    r = llmops_here(*where, "model=evil", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, before, "hydra.callbacks.evil._target_")


def test_logging_factories_and_non_logging_classes_are_refused(tmp_path):
    folder = evil_config_dir(tmp_path, LOGGING_YAML)
    before = files_under(tmp_path)
    r = llmops_here("--config-dir", str(folder), "model=evil", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, before, "hydra.job_logging.formatters.evil.()",
                   "hydra.job_logging.handlers.evil.class")
    assert "'builtins.open' is not a handler, formatter or filter class" in r.stderr


def test_logging_ext_imports_only_sys_streams():
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.targets import logging_problems

    assert logging_problems(compose([], return_hydra_config=True)) == []  # Hydra's defaults
    cfg = compose(["hydra.job_logging.handlers.console.stream=ext://antigravity.x",
                   "hydra.job_logging.handlers.file.class=logging.config.fileConfig"],
                  return_hydra_config=True)
    assert {p.key for p in logging_problems(cfg)} == {
        "hydra.job_logging.handlers.console.stream", "hydra.job_logging.handlers.file.class"}


def _multirun(tmp_path: Path, launcher: str) -> list[str]:
    """Returns the flags of a dry-run sweep on `launcher` with a config folder whose model=evil
    option sets the job's logging config (tmp_path/user_conf)."""
    folder = evil_config_dir(tmp_path, LOGGING_YAML)
    return ["-m", "--config-dir", str(folder), f"hydra/launcher={launcher}", "dry_run=true",
            "hydra.sweep.dir=sweep"]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_multirun_refuses_targets_in_its_config_and_in_a_point(tmp_path, launcher):
    base = _multirun(tmp_path, launcher)
    before = files_under(tmp_path)
    r = llmops_here(*base, "lora=r8,r16", "+hydra.callbacks.e._target_=builtins.open",
                    "+hydra.callbacks.e.file=pwned.txt", "+hydra.callbacks.e.mode=w",
                    cwd=tmp_path)
    assert_refused(r, tmp_path, before, "hydra.callbacks.e._target_")
    # Only one point's option sets the logging config: that point alone is named.
    r = llmops_here(*base, "model=tiny,evil", cwd=tmp_path)
    assert_refused(r, tmp_path, before, "hydra.job_logging.formatters.evil.()")
    assert "[sweep point: model=evil]" in r.stderr and "model=tiny]" not in r.stderr


def test_a_multirun_on_a_launcher_plugin_runs_without_the_bad_parts(tmp_path):
    """The launcher plugin itself is allowed: the sweep of the test above, without the bad
    parts, runs (submitit_local here; the joblib launcher's real sweep runs in
    test_cli_resolve_once.test_a_job_in_another_process_resolves_there_once)."""
    r = llmops(*_multirun(tmp_path, "submitit_local"), "lora=r8,r16", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/plan.json"))) == 2


def test_optuna_sampler_target_is_refused_before_the_study_starts(tmp_path):
    r = llmops_here("sweeps=optuna_rank_lr", "hydra.sweeper.sampler._target_=builtins.open",
                    "dry_run=true", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "hydra.sweeper.sampler._target_")
    assert "optuna.samplers.TPESampler" in r.stderr  # the allowed samplers are listed


def test_installed_plugin_targets_are_allowed_only_where_hydra_expects_them():
    from hydra.core.config_store import ConfigStore

    from llmops.cli import preflight
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.hydra_checks import hydra_problems

    # Hydra's first composition in a process registers the installed plugins' configs
    assert hydra_problems(compose([], return_hydra_config=True), None) == []
    repo = ConfigStore.instance().repo["hydra"]
    launchers = [n.removesuffix(".yaml") for n in repo["launcher"] if n.endswith(".yaml")]
    samplers = [n.removesuffix(".yaml") for n in repo["sweeper"]["sampler"]]
    assert {"basic", "joblib", "submitit_local", "submitit_slurm"} <= set(launchers)
    assert {"tpe", "random", "grid"} <= set(samplers)
    # each launcher and each sampler in one composition of a few (an optuna sweep on a launcher)
    launchers, width = [*launchers, "slurm"], max(len(launchers) + 1, len(samplers))
    for i in range(width):
        overrides = ["hydra/sweeper=optuna",
                     *[f"hydra/launcher={n}" for n in launchers[i:i + 1]],
                     *[f"hydra/sweeper/sampler={n}" for n in samplers[i:i + 1]]]
        cfg = compose(overrides, return_hydra_config=True)
        assert hydra_problems(cfg, None) == [], overrides
    assert len(preflight(["sweeps=optuna_rank_lr"]).points) == 6
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    cfg = compose([f"+lora._target_={joblib}", f"+hydra.launcher.inner._target_={joblib}",
                   "hydra/sweeper=optuna", "+hydra.sweeper.custom_search_space=os.system"],
                  return_hydra_config=True)
    assert {p.key for p in hydra_problems(cfg, None)} == {
        "lora._target_", "hydra.launcher.inner._target_", "hydra.sweeper.custom_search_space"}


def test_a_target_reached_through_an_interpolation_is_refused():
    """A resolver's node (oc.create) is resolved and walked where it is used; a reference to
    another key (${evil}, ${..evil}) is refused where that key is."""
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.hydra_checks import hydra_problems

    made = compose(['+hydra.callbacks.e="${oc.create:{_target_:builtins.open,file:pwned.txt}}"'],
                   return_hydra_config=True)
    assert [p.key for p in hydra_problems(made, None)] == ["hydra.callbacks.e._target_"]
    for ref in ("${evil}", "${..evil}"):
        cfg = compose(["+evil={_target_:builtins.open,file:pwned.txt}",
                       f"+hydra.callbacks.e={ref}"], return_hydra_config=True)
        assert [p.key for p in hydra_problems(cfg, None)] == ["evil._target_"], ref


# ---- 2. every command goes through the pre-flight ----


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--cfg", "job", "--resolve"],
                                   ["--cfg", "job", "--package", "lora"], ["-c", "all"]])
def test_cfg_with_a_typo_exits_2_with_the_hint(tmp_path, flags):
    r = llmops_here(*flags, "lora.rr=3", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "lora.rr")
    assert "Did you mean 'lora.r'?" in r.stderr


def test_cfg_refuses_a_target_and_still_prints_a_good_config(tmp_path):
    r = llmops_here("--cfg", "hydra", "+hydra.callbacks.e._target_=builtins.open", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "hydra.callbacks.e._target_")
    r = llmops_here("--cfg", "job", "--resolve", "lora=r8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "r: 8" in r.stdout and files_under(tmp_path) == set()


def test_config_dir_run_is_checked_first_and_uses_the_folder(tmp_path):
    folder = tmp_path / "user_conf"
    (folder / "lora").mkdir(parents=True)
    (folder / "lora" / "r4.yaml").write_text(
        "# LoRA rank 4, from the user's own folder.\nr: 4\nalpha: 8\ndropout: 0.0\n"
        "target_modules: all-linear\nenabled: true\n")
    before = files_under(tmp_path)
    r = llmops_here("--config-dir", str(folder), "lora=r4", "lora.r=0", "dry_run=true",
                    cwd=tmp_path)
    assert_refused(r, tmp_path, before, "lora.r")  # no .hydra/, no llmops.log
    r = llmops("-cd", str(folder), "lora=r4", "dry_run=true", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    [sft] = [s for s in plan["stages"] if s["kind"] == "sft"]
    assert sft["params"]["lora"]["r"] == 4
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(("flags", "key"), [
    (["--config-name", "nope"], "--config-name"),
    (["--config-path", "/nonexistent/conf"], "--config-path"),
    (["--config-dir", "missing_dir"], "--config-dir"),
    (["--experimental-rerun", "config.pickle"], "--experimental-rerun"),
])
def test_bad_config_source_flags_exit_2_naming_the_flag(tmp_path, flags, key):
    r = llmops_here(*flags, "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), key)


def test_chdir_true_exits_2_before_the_run_folder_exists(tmp_path):
    r = llmops_here("hydra.job.chdir=true", "dry_run=true", "hydra.run.dir=run", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "hydra.job.chdir")
    assert "must be false (got true)" in r.stderr


@pytest.mark.parametrize(("value", "why"), [
    ("", "is empty"),
    ("a_file", "is an existing file, not a folder"),
    ("a_file/runs/1", "cannot be created"),
])
@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_unusable_output_folder_exits_2_naming_the_key(tmp_path, value, why, mode):
    (tmp_path / "a_file").write_text("not a folder\n")
    key = f"hydra.{mode}.dir"
    multirun = ["-m", "lora=r8,r16"] if mode == "sweep" else []
    r = llmops_here(*multirun, f"{key}={value}", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, {"a_file"}, key)
    assert why in r.stderr and f"e.g. {key}=outputs/" in r.stderr
    assert (tmp_path / "a_file").read_text() == "not a folder\n"


# ---- 3. secrets ----


def test_secret_names_and_oc_env_masking(monkeypatch):
    from llmops.cli import to_plain
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.secrets import is_secret_name

    for name in ("WANDB_API_KEY", "HF_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                 "GITHUB_PAT_TOKEN", "MY_AUTH", "OPENAI_APIKEY", "CLIENT_CREDENTIALS",
                 "OPENAI_API_KEY"):
        assert is_secret_name(name), name
    for name in ("PWD", "HOME", "KEYBOARD_LAYOUT", "AUTHOR", "LLMOPS_STORE", "PATH"):
        assert not is_secret_name(name), name
    monkeypatch.setenv("HF_TOKEN", "abc")  # short values are still never resolved
    monkeypatch.setenv("LLMOPS_STORE", "/tmp/shared_store")
    monkeypatch.setenv("SERVICE_AUTH_MODE", "disabled")  # a plain word is not masked by value
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    cfg = compose(["tracking=wandb", "tracking.entity=${oc.env:HF_TOKEN}",
                   "tracking.group=team-${oc.env:UNSET_SECRET_KEY,x}", "tracking.mode=disabled",
                   "tracking.project=db-hunter2hunter2"])
    plain = to_plain(cfg)
    assert plain["tracking"]["entity"] == "${oc.env:HF_TOKEN}"
    assert plain["tracking"]["group"] == "team-${oc.env:UNSET_SECRET_KEY}"
    assert plain["tracking"]["mode"] == "disabled"
    assert plain["tracking"]["project"] == "db-${oc.env:DB_PASSWORD}"
    assert plain["store_dir"] == "/tmp/shared_store"  # a non-secret variable still resolves
    from omegaconf import OmegaConf

    assert OmegaConf.create({"x": "${oc.env:HF_TOKEN}"}).x == "abc"  # only inside llmops


def test_env_copy_of_a_secret_exits_2(tmp_path):
    r = llmops_here("hydra.job.env_copy=[WANDB_API_KEY]", "dry_run=true", cwd=tmp_path,
                    env={"WANDB_API_KEY": FAKE_KEY})
    assert_refused(r, tmp_path, set(), "hydra.job.env_copy")
    assert FAKE_KEY not in r.stderr


def test_secrets_from_the_environment_reach_no_file_log_or_output(tmp_path):
    """A real (cheap) run with W&B offline: one secret through ${oc.env:...}, one shell-expanded
    on the command line, both in keys that stay inside llmops (W&B gets the config, masked).
    Every file under the working folder (run folder, .hydra, llmops.log, the W&B run, the store)
    is read back byte by byte. A key that leaves llmops (tracking.entity) may not read a secret:
    test_hardening_gaps."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"WANDB_API_KEY": FAKE_KEY, "MY_SERVICE_TOKEN": FAKE_TOKEN, "WANDB_MODE": "offline",
           "HOME": str(home), "WANDB_CONFIG_DIR": str(home / ".config"),
           "WANDB_CACHE_DIR": str(home / ".cache"), "WANDB_DATA_DIR": str(home / ".data")}
    r = llmops(*CHEAP, "tracking=wandb", "tracking.mode=offline",
               "++usecase.description=${oc.env:WANDB_API_KEY}", f"++usecase.name={FAKE_TOKEN}",
               "hydra.run.dir=run", "store_dir=store", cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and home not in p.parents]
    names = {p.name for p in written}
    assert {"plan.json", "manifest.json", "metrics.json", "llmops.log", "config.yaml",
            "overrides.yaml", "_stage.json"} <= names
    assert any(p.suffix == ".wandb" for p in written)
    for secret in (FAKE_KEY, FAKE_TOKEN):
        assert secret not in r.stdout + r.stderr
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert leaks == [], secret
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["usecase"]["description"] == "${oc.env:WANDB_API_KEY}"
    assert manifest["config"]["usecase"]["name"] == "${oc.env:MY_SERVICE_TOKEN}"
    assert "++usecase.description=${oc.env:WANDB_API_KEY}" in manifest["overrides"]


# ---- 4. hints ----


def _problem(overrides: list[str]) -> str:
    from llmops.config.hydra.compose import compose

    with pytest.raises(ConfigError) as info:
        compose(overrides)
    [problem] = info.value.problems
    return problem.message


def test_unknown_key_hint_lists_the_keys_of_the_chosen_option():
    message = _problem(["tracking=wandb", "tracking.projct=x"])
    assert message.startswith("unknown key. Did you mean 'tracking.project'? Keys allowed "
                              "under 'tracking': backend, entity, group, mode, project, tags.")


def test_unknown_key_hint_says_which_option_sets_a_schema_key():
    message = _problem(["tracking.projct=x"])
    assert ("Did you mean 'tracking.project'? tracking=none does not set it: choose "
            "tracking=wandb, or add it with '+tracking.project=x'.") in message
    message = _problem(["deploy.olama.host=http://h:1"])
    assert ("Did you mean 'deploy.ollama.host'? deploy=local does not set it: choose "
            "deploy=ollama, or add it with '+deploy.ollama.host=http://h:1'.") in message


def test_a_rightly_spelled_key_of_another_option_gets_no_did_you_mean_itself():
    message = _problem(["deploy=none", "deploy.allow_failed_gates=true"])
    assert message.startswith("unknown key. deploy=none does not set 'deploy.allow_failed_gates': "
                              "choose deploy=ollama or deploy=openai, or add it with "
                              "'+deploy.allow_failed_gates=true'.")
    assert "Did you mean" not in message


def test_did_you_mean_names_the_full_key(tmp_path):
    r = llmops_here("lora.rr=3", "train.lrr=1e-3", cwd=tmp_path)
    assert r.returncode == 2
    assert "  - lora.rr: unknown key. Did you mean 'lora.r'?" in r.stderr
    assert "  - train.lrr: unknown key. Did you mean 'train.learning_rate'?" in r.stderr
