"""Hardening, the last ways a config could run code or clobber files: a `pkg://` search path
entry (Hydra imports it while composing), `hydra.job.env_set` of LD_PRELOAD/PYTHONPATH, a log
handler's filename outside the run folder, and a secret read by a key that leaves llmops. Each
runs `python -m llmops` in a subprocess whose working folder is tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_hardening_config import assert_refused, files_under, llmops

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
