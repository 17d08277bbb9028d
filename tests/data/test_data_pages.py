"""The data stage's memory at scale: mapped Arrow pages are released (llmops.data.pages), and
the splits are written in their shuffled order without mapping the whole column in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmops.data import pages, pipeline
from llmops.stages import data_io

ROWS, WIDTH = 30_000, 1_500  # ~45 MB of text: over a window, several steps


def _mapped_kb(path: Path) -> int:
    """Returns this process's resident KB of the mappings of ``path`` (/proc/self/smaps)."""
    total, mine = 0, False
    with open("/proc/self/smaps") as smaps:
        for entry in smaps:
            fields = entry.split()
            if fields and not fields[0].endswith(":"):
                mine = len(fields) > 5 and fields[5] == str(path)
            elif mine and fields[0] == "Rss:":
                total += int(fields[1])
    return total


@pytest.fixture
def mapped_rows(tmp_path):
    """Returns a memory-mapped Dataset of ``_line`` texts (row i says i) and its Arrow file."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    path = tmp_path / "lines.arrow"
    features = datasets.Features({pipeline.LINE: datasets.Value("string")})
    with ArrowWriter(features=features, path=str(path)) as writer:
        for start in range(0, ROWS, 5_000):
            writer.write_batch({pipeline.LINE: [
                json.dumps({"i": i, "pad": "x" * WIDTH})
                for i in range(start, start + 5_000)]})
        writer.finalize()
    return datasets.Dataset.from_file(str(path)), path


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc needed")
def test_release_drops_the_mapped_pages_read_and_the_data_reads_back_the_same(mapped_rows):
    rows, path = mapped_rows
    first = rows.data.table.column(pipeline.LINE).to_pylist()
    assert _mapped_kb(path) > 30_000  # the whole column was read through the mapping
    assert pages.release() > 0
    assert _mapped_kb(path) < 1_000
    assert rows.data.table.column(pipeline.LINE).to_pylist() == first


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc needed")
def test_write_rows_writes_shuffled_positions_in_order_holding_few_mapped_pages(mapped_rows,
                                                                               tmp_path):
    rows, path = mapped_rows
    view = rows.select(np.random.default_rng(1).permutation(ROWS))  # an index mapping
    positions = np.random.default_rng(2).permutation(ROWS)[:25_000]
    out = tmp_path / "train.jsonl"
    pages.release()
    data_io.write_rows(out, view, positions)
    mapping = view._indices.column(0).to_numpy()  # noqa: SLF001
    assert [json.loads(t)["i"] for t in out.read_text().splitlines()] == \
        mapping[positions].tolist()
    assert _mapped_kb(path) < 1_000  # today's writer leaves the column mapped in
