"""Pins the bytes the data stage writes: train/val/test.jsonl (and pref_*.jsonl) for fixed inputs
must stay exactly what llmops 0.2.0's row-by-row writer produced (``tests/data/written.json``
holds their SHA-256, taken from that writer before the stage moved to one pass per batch).

The inputs are copied into a temp folder and that folder's path is replaced by ``<DIR>`` (the
bundled sample's folder by ``<SAMPLES>``) before hashing, so the digests do not depend on where
the repository lives. To regenerate the digests
(only for an intended change of the written form): ``python tests/data/test_data_written.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

DATA = Path(__file__).parent
EXPECTED = DATA / "written.json"
SAMPLE = Path(__file__).parents[2] / "llmops" / "data" / "samples" / "tasks_chat.jsonl"
INPUTS = ("written_chat.jsonl", "written_pairs.jsonl", "written_text.jsonl", "dirty_tools.jsonl",
          "instruct_100.jsonl", "openai_tools.jsonl", "sharegpt_tools.json", "alpaca.json")
CASES: dict[str, tuple[str, ...]] = {
    "task_api": ("data=task_api", "data.n_examples=300"),
    "chat": ("data=files", "data.path=<DIR>/written_chat.jsonl"),
    "chat_dedup_off": ("data=files", "data.path=<DIR>/written_chat.jsonl", "data.dedup=false"),
    "chat_num_proc_2": ("data=files", "data.path=<DIR>/written_chat.jsonl", "data.num_proc=2"),
    "sample_system_prompt": ("data=files", f"data.path={SAMPLE}", "data.system_prompt=Be brief."),
    "dirty": ("data=files", "data.path=<DIR>/dirty_tools.jsonl"),
    "instruct_system_prompt": ("data=files", "data.path=<DIR>/instruct_100.jsonl",
                               "data.system_prompt=Be brief."),
    "sharegpt_alpaca": ("data=files", "data.sources=[{path: <DIR>/sharegpt_tools.json}, "
                        "{path: <DIR>/alpaca.json}]"),
    "mixture_repeats": ("data=files", "data.sources=[{path: <DIR>/written_chat.jsonl}, "
                        "{path: <DIR>/instruct_100.jsonl, samples: 150}]"),
    "pairs_dpo": ("data=files", "data.path=<DIR>/written_pairs.jsonl", "train=dpo"),
    "derived_pairs": ("data=files", "data.path=<DIR>/written_chat.jsonl", "train=dpo"),
    "text": ("data=files", "data.path=<DIR>/written_text.jsonl", "data.format=text"),
}


def written_digests(root: Path, params_of: Callable[[tuple[str, ...]], dict]) -> dict:
    """Runs the data stage on every case; returns ``{case: {file: sha256}}`` of what it wrote."""
    from llmops.core.context import StageContext
    from llmops.stages import data

    inputs = root / "in"
    inputs.mkdir()
    for name in INPUTS:
        shutil.copy(DATA / name, inputs / name)
    out: dict[str, dict[str, str]] = {}
    for case, overrides in CASES.items():
        folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{case}_"))
        params = params_of(tuple(o.replace("<DIR>", str(inputs)) for o in overrides))
        ctx = StageContext(run_dir=folder, logger=logging.getLogger("test.written"),
                           show_progress=False)
        data.run(params, {}, folder, ctx)
        out[case] = {
            p.name: hashlib.sha256(p.read_bytes().replace(str(inputs).encode(), b"<DIR>")
                                   .replace(str(SAMPLE.parent).encode(), b"<SAMPLES>")
                                   ).hexdigest()
            for p in sorted(folder.glob("*.jsonl"))}
    return out


def test_written_splits_are_byte_identical_to_the_row_by_row_writer(tmp_path, stage_params):
    expected = json.loads(EXPECTED.read_text())
    got = written_digests(tmp_path, lambda overrides: stage_params("data", *overrides))
    assert {case: sorted(files) for case, files in got.items()} == {
        case: sorted(files) for case, files in expected.items()}
    changed = [f"{case}/{name}" for case, files in expected.items()
               for name, digest in files.items() if got[case][name] != digest]
    assert changed == []


if __name__ == "__main__":  # regenerate the digests with the llmops on sys.path
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from conftest import _compile

    with tempfile.TemporaryDirectory() as tmp:
        digests = written_digests(Path(tmp), lambda o: _compile(["hardware=cpu", *o])[1]
                                  .stage("data").params)
    EXPECTED.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
