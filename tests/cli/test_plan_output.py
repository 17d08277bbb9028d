"""What the plan table prints is the plan's text as it is: no rich markup or emoji codes.

A real process: a dry run that passes the pre-flight goes on into Hydra's run (its logging
config, the run folder), which must not happen inside a pytest worker (tests/cli/cli_here.py).
"""

from __future__ import annotations

from test_hardening_config import llmops


def test_a_hub_dataset_split_in_brackets_is_printed(tmp_path):
    r = llmops("data=hf", "data.hf_id=tatsu-lab/alpaca", "data.format=alpaca", "dry_run=true",
               cwd=tmp_path, env={"LLMOPS_STORE": str(tmp_path / "store")})
    assert r.returncode == 0, r.stderr
    assert "tatsu-lab/alpaca[train]" in r.stdout  # rich markup would take [train] for a style
