"""Files llmops writes get the mode `open()` gives (0666 less the umask: 0644 by default), the
safetensors files that safetensors' save_file writes 0600 included: every store entry is
published through Store.publish, which shares them (llmops.files.share_like_open).

The unit tests write real safetensors files (the library's own 0600) into a real store; the
end-to-end test reads the modes of the session's one real tiny run (conftest's chain_run).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from fixtures_model import needs_gguf

from llmops.core.plan import StageSpec
from llmops.files import share_like_open, umask
from llmops.store.cas import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _spec(fp: str = "c" * 64) -> StageSpec:
    return StageSpec(name="sft", kind="sft", params={}, needs=(), fingerprint=fp, summary="")


@pytest.mark.parametrize("mask,want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664),
                                       (0o077, 0o600)])
def test_published_safetensors_get_the_mode_open_gives(tmp_path, mask, want):
    import torch
    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        assert umask() == mask
        store = Store(tmp_path / "store")
        tmp = store.new_tmp(_spec())
        (tmp / "adapter").mkdir()
        save_file({"w": torch.zeros(4)}, str(tmp / "adapter" / "adapter_model.safetensors"))
        (tmp / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        save_file({"w": torch.ones(2)}, str(tmp / "checkpoints" / "checkpoint-2" / "m.safetensors"))
        assert _mode(tmp / "adapter" / "adapter_model.safetensors") == 0o600  # the library's
        script = tmp / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o700)  # not a private library file: kept
        (tmp / "report.json").write_text("{}")
        outside = tmp_path / "outside.safetensors"
        save_file({"w": torch.zeros(1)}, str(outside))
        (tmp / "link.safetensors").symlink_to(outside)  # links are not followed
        entry = store.publish(_spec(), tmp, {})
    finally:
        os.umask(old)
    assert _mode(entry / "adapter" / "adapter_model.safetensors") == want
    assert _mode(entry / "checkpoints" / "checkpoint-2" / "m.safetensors") == want
    assert _mode(entry / "report.json") == 0o666 & ~mask
    assert _mode(entry / "run.sh") == 0o700
    assert _mode(outside) == 0o600
    assert store.check(entry, full=True).state == "ok"  # the recorded hashes still hold


def test_share_like_open_changes_only_private_regular_files(tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "a").chmod(0o600)
    (tmp_path / "b").write_text("x")
    (tmp_path / "b").chmod(0o400)
    old = os.umask(0o022)
    try:
        assert share_like_open(tmp_path) == 1
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a") == 0o644 and _mode(tmp_path / "b") == 0o400


@needs_gguf
@pytest.mark.slow
def test_every_safetensors_of_a_real_run_is_readable_by_group_and_others(chain_run):
    """base, adapter, checkpoints, merged, and the release's copies of the tiny default run."""
    run = chain_run["run"]
    manifest = json.loads((run / "manifest.json").read_text())
    mask = 0o022  # conftest runs the chain under the default umask of this machine
    found = {}
    for name in ("base", "sft", "export", "release"):
        if name in manifest["stages"]:
            folder = (run / "stages" / name).resolve()
            found[name] = sorted(folder.rglob("*.safetensors"))
    assert found["sft"] and found["export"] and found["release"], found
    assert any("checkpoint" in str(p) for p in found["sft"])
    bad = [f"{p} {oct(_mode(p))}" for paths in found.values() for p in paths
           if _mode(p) != 0o666 & ~mask]
    assert not bad, bad
