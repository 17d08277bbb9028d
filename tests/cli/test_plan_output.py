"""What the plan table prints is the plan's text as it is: no rich markup or emoji codes."""

from __future__ import annotations

from cli_here import llmops_here


def test_a_hub_dataset_split_in_brackets_is_printed(tmp_path):
    r = llmops_here("data=hf", "data.hf_id=tatsu-lab/alpaca", "data.format=alpaca",
                    "dry_run=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "tatsu-lab/alpaca[train]" in r.stdout  # rich markup would take [train] for a style
