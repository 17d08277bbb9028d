"""The preference pairs a preference stage (dpo, orpo, simpo) trains and is scored on.

Pairs are ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant], "meta":
{"kind", "tool", ...}}`` in pref_{train,val,test}.jsonl. Data that are pairs themselves bring
their own (the data stage wrote them, method "rows"); otherwise the stage derives them from the
data stage's splits (method "derive") or reads data.preference_path and splits it like the rows
(method "path"), into its own folder. The data stage never depends on the method, so a method
sweep shares it; the derivation is pure and deterministic for data.seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.data import PairsParams
from llmops.core.context import StageContext
from llmops.errors import StageError

SPLITS = ("train", "val", "test")
MAX_LISTED = 200


def prepare(params: PairsParams, data_dir: Path, out_dir: Path, ctx: StageContext
            ) -> tuple[Path, dict[str, Any]]:
    """Returns the folder holding pref_{train,val,test}.jsonl and the pairs' report section
    ({method, counts, files, ...}); derived or read pairs are written into ``out_dir/pairs``.

    Raises:
        StageError: When data.preference_path holds no valid pair, or no pair can be derived.
    """
    import numpy as np

    from llmops.data import mix, preferences
    from llmops.data.convert import FormatError
    from llmops.data.limits import Limits
    from llmops.files import read_jsonl, write_jsonl

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if (data_dir / "pref_train.jsonl").is_file():  # the data are pairs: the data stage's own
        counts = {n: _lines(data_dir / f"pref_{n}.jsonl") for n in SPLITS}
        return data_dir, {"method": "rows", "counts": counts,
                          "files": [f"pref_{n}.jsonl" for n in SPLITS]}
    folder = out_dir / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    if params["source"] == "path":
        path = params["preference_path"]
        try:
            pairs, rejects, n_read = preferences.read_pairs(
                path, params["system_prompt"], str(out_dir / ".arrow"),
                Limits.of(params["limits"]))
        except FormatError as exc:
            raise StageError(str(exc)) from exc
        if not pairs:
            first = "; ".join(f"line {r['line']}: {r['message']}" for r in rejects[:3])
            raise StageError(f"data.preference_path: no valid pair in {path} ({n_read} read"
                             f"{': ' + first if first else ''}). Each row needs prompt, chosen "
                             "and rejected.")
        strata = np.asarray([p["meta"]["kind"] for p in pairs])
        local = mix.split_indices(strata, params["val_fraction"], params["test_fraction"],
                                  params["seed"])
        for name, idx in local.items():
            write_jsonl(folder / f"pref_{name}.jsonl", [pairs[i] for i in idx])
            counts[name] = int(idx.size)
        section: dict[str, Any] = {"method": "path", "origin": path, "read": n_read,
                                   "rejected": len(rejects), "rejects": rejects[:MAX_LISTED]}
    else:
        kinds: dict[str, int] = {}
        for i, name in enumerate(SPLITS):
            split = data_dir / f"{name}.jsonl"
            # rows labelled undesirable (label=false, KTO's) hold no answer to prefer
            rows = [r for r in (read_jsonl(split) if split.is_file() else [])
                    if r.get("label") is not False]
            pairs, k = preferences.derive(rows, params["seed"] + 1000 * (i + 1))
            write_jsonl(folder / f"pref_{name}.jsonl", pairs)
            counts[name] = len(pairs)
            for key, n in k.items():
                kinds[key] = kinds.get(key, 0) + n
        if not counts["train"]:
            raise StageError("no preference pair could be derived from the data stage's rows. "
                             "Give pairs with data.preference_path=FILE (prompt/chosen/rejected).")
        section = {"method": "derive", "kinds": dict(sorted(kinds.items())),
                   "derivation": {k: preferences.DERIVATION[k] for k in sorted(kinds)}}
    section["counts"] = counts
    section["files"] = [f"pairs/pref_{name}.jsonl" for name in SPLITS]
    ctx.logger.info("preference pairs (%s) train %d / val %d / test %d", section["method"],
                    *(counts[n] for n in SPLITS))
    return folder, section


def _lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())
