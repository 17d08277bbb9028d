"""Hardening: a good run ends without a traceback whatever its gates say, one bad row is one
reject, data.path must be a regular file, and the files llmops writes are readable by others."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.data import task_api

# ---- file modes ----


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_json_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    from llmops.runner.files import write_json_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "manifest.json", {"status": "running"})
        write_json_atomic(tmp_path / "manifest.json", {"status": "succeeded"})  # replaced
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == mode
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"status": "succeeded"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
