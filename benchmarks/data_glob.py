"""Glob benchmark: the data stage over many one-row JSON Lines files (issue 20).

Writes N files of one chat row each into a temp folder and runs the real data stage
(``llmops.stages.data.run``) on ``FOLDER/*.jsonl``, printing files per second. Measured on the
shared 2-core box (2026-12-06), 5,000 files: 12 files/s (417 s) when every file had its own map
and worker pool, 606-767 files/s (6.5-8.2 s) reading them in one pass.

    python benchmarks/data_glob.py            # 5,000 files
    python benchmarks/data_glob.py 100000
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path


def main(n: int) -> None:
    import datasets

    from llmops.core.context import StageContext
    from llmops.stages import data

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="llmops_glob_") as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        for i in range(n):
            row = {"messages": [{"role": "user", "content": f"list tasks {i}"},
                                {"role": "assistant", "content": f"Here they are, {i}."}]}
            (folder / f"{i:06d}.jsonl").write_text(json.dumps(row) + "\n")
        out = Path(tmp) / "out"
        out.mkdir()
        source = {"path": f"{folder}/*.jsonl", "format": "auto", "weight": None,
                  "samples": None, "columns": {}, "tags": {}}
        params = {"source": "files", "sources": [source], "format": "auto", "columns": {},
                  "tags": {}, "hf_id": None, "hf_split": "train", "n_examples": 10,
                  "system_prompt": None, "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0,
                  "dedup": True, "max_length": 512, "on_error": "keep",
                  "on_unsupported": "fail", "num_proc": None,
                  "model": {"name": "x", "hub_id": None, "trust_remote_code": False},
                  "limits": {"row_bytes": 16 << 20, "json_depth": 64, "pattern_seconds": 1.0,
                             "template_seconds": 5.0, "glob_files_warn": 10_000}}
        logging.basicConfig(level=logging.ERROR)
        start = time.perf_counter()
        report = data.run(params, {}, out, StageContext(run_dir=out,
                                                        logger=logging.getLogger("bench")))
        seconds = time.perf_counter() - start
    print(f"{n} files: {seconds:.1f} s, {n / seconds:.0f} files/s, "
          f"{report['counts']['valid']} valid rows")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
