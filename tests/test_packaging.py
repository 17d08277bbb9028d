"""Packaging: every package ships, the config groups (sweeps/ too) ship inside llmops.conf."""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _declared_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_every_python_package_is_declared():
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "llmops").rglob("__init__.py")
    }
    missing = found - _declared_packages()
    assert not missing, f"add to setup.cfg packages: {missing}"
    assert "llmops.conf" in _declared_packages()


def test_sweeps_group_is_reachable_from_the_conf_package():
    import llmops.conf

    conf = Path(llmops.conf.__file__).parent
    assert (conf / "sweeps" / "none.yaml").is_file()
    assert (conf / "model" / "tiny.yaml").is_file()


def test_one_sweeps_folder_at_the_top_level_that_the_conf_package_ships():
    """sweeps/ is the one copy; conf/sweeps links to it, so Hydra finds the group in a clone
    and setuptools copies the files into llmops/conf/sweeps/ of a wheel (package_data */*.yaml)."""
    link = REPO / "conf" / "sweeps"
    assert link.is_symlink() and link.resolve() == (REPO / "sweeps").resolve()
    assert {p.name for p in (REPO / "sweeps").glob("*.yaml")} >= {"none.yaml", "rank_lr.yaml"}
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "*/*.yaml" in cfg["options.package_data"]["llmops.conf"]
