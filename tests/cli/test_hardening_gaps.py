"""Hardening, the last ways a config could run code or clobber files: a `pkg://` search path
entry (Hydra imports it while composing), `hydra.job.env_set` of LD_PRELOAD/PYTHONPATH, a log
handler's filename outside the run folder, and a secret read by a key that leaves llmops. Each
runs `python -m llmops` with tmp_path as its working folder: in a subprocess where the process
matters (a search path entry is looked up on its import path; a command that runs), else as
llmops.cli.main in this process (cli_here.llmops_here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_here import llmops_here
from test_hardening_config import (
    FAKE_KEY,
    FAKE_TOKEN,
    VICTIM_TEXT,
    assert_refused,
    files_under,
    llmops,
)

PWN = 'open("pwned.txt", "w").write("imported")\n'


def write_pwn(tmp_path: Path) -> None:
    """Puts a module in the working folder that writes pwned.txt when it is imported."""
    (tmp_path / "pwn.py").write_text(PWN)
    (tmp_path / "pwnpkg").mkdir()
    (tmp_path / "pwnpkg" / "__init__.py").write_text(PWN)


def user_conf(tmp_path: Path) -> Path:
    """Writes a folder of configs: lora/r4.yaml, and evil.yaml, a primary config whose own
    hydra.searchpath names the working folder's module."""
    folder = tmp_path / "user_conf"
    (folder / "lora").mkdir(parents=True)
    (folder / "lora" / "r4.yaml").write_text(
        "# LoRA rank 4, from the user's own folder.\nr: 4\nalpha: 8\ndropout: 0.0\n"
        "target_modules: all-linear\nenabled: true\n")
    (folder / "evil.yaml").write_text(
        "# A primary config that makes Hydra import a module of the working folder.\n"
        "defaults:\n  - config\n  - _self_\nhydra:\n  searchpath:\n    - pkg://pwnpkg\n")
    return folder


@pytest.mark.parametrize(("args", "key"), [
    (["hydra.searchpath=[pkg://pwn]"], "hydra.searchpath"),
    (["--cfg", "job", "hydra.searchpath=[pkg://pwnpkg]"], "hydra.searchpath"),
    (["--help", "hydra.searchpath=[pkg://pwn]"], "hydra.searchpath"),  # Hydra composes for it
    (["--info", "searchpath", "-cp", "../pwnpkg"], "--config-path"),
    (["hydra.searchpath=[structured://pwn]"], "hydra.searchpath"),
    (["-cp", "../pwnpkg"], "--config-path"),  # Hydra makes it pkg://pwnpkg
    (["-cd", "user_conf", "-cn", "evil"], "hydra.searchpath"),
    (["-m", "lora=r8,r16", "hydra.searchpath=[file://user_conf],[pkg://pwnpkg]",
      "hydra.sweep.dir=sweep"], "hydra.searchpath"),
], ids=["override", "cfg", "help", "info_config_path", "structured", "config_path",
        "primary_config", "sweep_point"])
def test_searchpath_never_imports_a_module_of_the_working_folder(tmp_path, args, key):
    write_pwn(tmp_path)
    user_conf(tmp_path)
    before = files_under(tmp_path)
    r = llmops(*args, "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, before, key)  # no pwned.txt: pwn never ran
    assert "Hydra would import it, running its code" in r.stderr or (
        "structured:// imports the module 'pwn'" in r.stderr)


def test_searchpath_allows_folders_and_installed_packages_and_names_the_primary_file(tmp_path):
    write_pwn(tmp_path)
    folder = user_conf(tmp_path)
    before = files_under(tmp_path)
    r = llmops("-cd", "user_conf", "-cn", "evil", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, before, "hydra.searchpath")
    assert (f"'pkg://pwnpkg' (in file://{folder}/evil.yaml): 'pwnpkg' is found in the working "
            f"folder ({tmp_path / 'pwnpkg' / '__init__.py'})") in r.stderr
    assert "Allowed: file://FOLDER (a folder of configs), or pkg://PACKAGE" in r.stderr
    r = llmops("hydra.searchpath=[pkg://email]", "dry_run=true", cwd=tmp_path)  # the stdlib's
    assert_refused(r, tmp_path, before, "hydra.searchpath")
    assert "'email' is not a package of an installed distribution" in r.stderr
    installed = "pkg://hydra_plugins.hydra_joblib_launcher,pkg://filelock"  # distributions'
    r = llmops(f"hydra.searchpath=[file://{folder},{installed}]", "lora=r4", "dry_run=true",
               "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "plan.json").is_file() and not (tmp_path / "pwned.txt").exists()


def test_llmops_own_primary_config_has_its_searchpath_checked_without_a_repository(
        tmp_path, monkeypatch):
    """Without -cp/-cn/-cd the primary config is llmops.conf's config.yaml, read from the package
    (the file Hydra's search path finds first) instead of through a repository of the search
    path: the same entries, and one the packaged file named would be refused as the user's."""
    import llmops.conf

    from llmops.config.hydra import searchpath
    from llmops.config.hydra.source import DEFAULT, Source

    through_hydra = Source(config_dir=str(tmp_path))  # an empty folder first: the same primary
    assert searchpath._primary_entries(DEFAULT) == searchpath._primary_entries(through_hydra)
    assert searchpath._primary_entries(DEFAULT) == ([], "")
    primary = llmops.conf.load_primary()
    primary["hydra"]["searchpath"] = ["pkg://pwnpkg", "file://ok"]
    monkeypatch.setattr(llmops.conf, "load_primary", lambda: primary)
    problems = searchpath.search_path_problems([], DEFAULT)
    assert [p.key for p in problems] == ["hydra.searchpath"]
    assert problems[0].message.startswith(
        "'pkg://pwnpkg' (in pkg://llmops.conf/config.yaml): no package 'pwnpkg' is installed")


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES",
                                  "PYTHONPATH", "PYTHONSTARTUP", "BASH_ENV", "PATH"])
def test_env_set_of_a_variable_that_changes_code_exits_2(tmp_path, name):
    r = llmops_here(f"+hydra.job.env_set.{name}=/tmp/evil", "dry_run=true", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), f"hydra.job.env_set.{name}")
    assert (f"'/tmp/evil': {name} changes what code runs in the job and its torchrun "
            f"subprocesses, so a config may not set it. Remove it; if you really mean it, set "
            f"it in your shell: {name}=... python -m llmops ...") in r.stderr


def test_env_set_is_checked_in_a_multirun_and_plain_names_still_run(tmp_path):
    r = llmops_here("-m", "lora=r8,r16", "+hydra.job.env_set.LD_PRELOAD=/tmp/evil.so",
                    "dry_run=true", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert_refused(r, tmp_path, set(), "hydra.job.env_set.LD_PRELOAD")
    r = llmops("+hydra.job.env_set.TOKENIZERS_PARALLELISM=false", "dry_run=true",
               "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]


LOG_FILE = "hydra.job_logging.handlers.file.filename"


@pytest.mark.parametrize(("args", "victim", "key"), [
    ([f"{LOG_FILE}=victim.txt", "+hydra.job_logging.handlers.file.mode=w"], "victim.txt",
     LOG_FILE),
    (["hydra.job.name=../victim"], "victim.log", LOG_FILE),  # ${hydra.runtime.output_dir}/../
    (["hydra/hydra_logging=hydra_debug"], "hydra-llmops.log",  # Hydra's own, mode: w
     "hydra.hydra_logging.handlers.file.filename"),
    (["-m", "lora=r8,r16", f"{LOG_FILE}=victim.txt", "hydra.sweep.dir=sweep"], "victim.txt",
     LOG_FILE),
], ids=["relative_mode_w", "job_name_dotdot", "hydra_debug", "multirun"])
def test_log_file_outside_the_run_folder_exits_2_and_leaves_the_file(tmp_path, args, victim,
                                                                       key):
    (tmp_path / victim).write_text(VICTIM_TEXT)
    before = files_under(tmp_path)
    r = llmops_here(*args, "dry_run=true", "hydra.run.dir=run", cwd=tmp_path)
    assert_refused(r, tmp_path, before, key)
    assert f"is {tmp_path / victim}, not a file inside the run folder" in r.stderr
    assert (tmp_path / victim).read_text() == VICTIM_TEXT


def test_log_file_from_a_config_file_is_refused_and_one_inside_the_run_folder_is_written(
        tmp_path):
    folder = tmp_path / "user_conf" / "model"
    folder.mkdir(parents=True)
    (folder / "evil.yaml").write_text(
        "# @package _global_\n# A model option that points the job's log at a user's file.\n"
        "defaults:\n  - /model/tiny@model\nhydra:\n  job_logging:\n    handlers:\n"
        "      file:\n        filename: ${oc.env:HOME}/.bashrc\n        mode: w\n")
    (tmp_path / ".bashrc").write_text(VICTIM_TEXT)
    before = files_under(tmp_path)
    r = llmops_here("-cd", "user_conf", "model=evil", "dry_run=true", cwd=tmp_path,
                    env={"HOME": str(tmp_path)})
    assert_refused(r, tmp_path, before, LOG_FILE)
    assert f"'${{oc.env:HOME}}/.bashrc' is {tmp_path / '.bashrc'}, not a file inside" in r.stderr
    assert (tmp_path / ".bashrc").read_text() == VICTIM_TEXT
    r = llmops(f"{LOG_FILE}=${{hydra:runtime.output_dir}}/job.log", "dry_run=true",
               "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "job.log").is_file() and not (tmp_path / "run" / "llmops.log"
                                                            ).exists()


def test_the_log_file_check_leaves_the_composition_as_it_was():
    """The check sets what Hydra's run_job sets on the pre-flight's composition itself (no copy)
    and puts it back: the job Hydra then runs gets the composition as composed."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from llmops.config.hydra.compose import compose_to_keep
    from llmops.config.hydra.log_files import log_file_problems

    cfg = compose_to_keep([f"{LOG_FILE}=${{hydra:runtime.output_dir}}/../../victim.txt"])
    before = OmegaConf.to_yaml(cfg)
    hydra_cfg = HydraConfig.instance().cfg
    problems = log_file_problems(cfg, "hydra.sweep.dir", "hydra.sweep.subdir")
    victim = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))).absolute().parent / "victim.txt"
    assert [p.key for p in problems] == [LOG_FILE]  # resolved in job 0's folder: <sweep>/0
    assert f"../../victim.txt' is {victim}, not a file inside" in problems[0].message
    assert OmegaConf.to_yaml(cfg) == before
    assert OmegaConf.is_missing(cfg.hydra.job, "num")
    assert OmegaConf.is_missing(cfg.hydra.runtime, "output_dir")
    assert cfg.hydra._get_flag("readonly") is False and cfg._get_flag("struct") is True
    assert HydraConfig.instance().cfg is hydra_cfg


def test_secret_in_a_key_that_leaves_llmops_exits_2(tmp_path):
    env = {"WANDB_API_KEY": FAKE_KEY, "MY_SERVICE_TOKEN": FAKE_TOKEN}
    r = llmops_here("tracking=wandb", "tracking.mode=offline",
                    "tracking.entity=${oc.env:WANDB_API_KEY}",
                    f"tracking.tags=[ok,{FAKE_TOKEN}]", "dry_run=true", cwd=tmp_path, env=env)
    assert_refused(r, tmp_path, set(), "tracking.entity", "tracking.tags")
    assert ("  - tracking.entity: reads WANDB_API_KEY, a secret: W&B would receive it as the "
            "entity name. llmops never resolves a secret, so it would send the text "
            "'${oc.env:WANDB_API_KEY}'. Give the value itself, e.g. tracking.entity=my-team"
            ) in r.stderr
    assert "  - tracking.tags: reads MY_SERVICE_TOKEN, a secret: W&B would receive it as a tag" \
        in r.stderr  # typed shell-expanded: its value is masked first
    assert FAKE_KEY not in r.stderr + r.stdout and FAKE_TOKEN not in r.stderr + r.stdout


#: Keys that name a file, a served model or an Ollama model: checked against a name pattern
#: (llmops.config.names) before the secret rule runs.
NAME_KEYS = {"model.name", "deploy.ollama.model_name"}


def test_every_key_that_leaves_llmops_refuses_a_secret_and_others_keep_the_mask():
    from llmops.cli import to_plain
    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.secrets import OUTBOUND
    from llmops.config.validate import validate
    from llmops.errors import ConfigError

    # every such key reads the secret in one composition: validate lists each key's problem
    with pytest.raises(ConfigError) as info:
        validate(to_plain(compose([
            "tracking=wandb", "deploy=ollama",
            *[f"++{key}=[${{oc.env:HF_TOKEN}}]" if key == "tracking.tags"
              else f"++{key}=${{oc.env:HF_TOKEN}}" for key in OUTBOUND]])))
    assert {p.key for p in info.value.problems} == set(OUTBOUND)
    for key in OUTBOUND:
        messages = [p.message for p in info.value.problems if p.key == key]
        if key in NAME_KEYS:  # refused earlier by the name's own pattern, the text unresolved
            assert len(messages) == 1 and "(got '${oc.env:HF_TOKEN}')" in messages[0], messages
            continue
        assert messages == [
            f"reads HF_TOKEN, a secret: {OUTBOUND[key][0]}. llmops never resolves a secret, so "
            f"it would send the text '${{oc.env:HF_TOKEN}}'. Give the value itself, e.g. "
            f"{key}={OUTBOUND[key][1]}; the services read their own keys from the environment."]
    plain = to_plain(compose(["usecase.description=${oc.env:HF_TOKEN}"]))
    assert validate(plain).usecase.description == "${oc.env:HF_TOKEN}"  # stays inside llmops
