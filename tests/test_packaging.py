"""Packaging: every package ships, the config groups ship inside llmops.conf."""

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
