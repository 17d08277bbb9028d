"""The reachability pre-flight: a real run of a hub model that cannot be had exits 2 at once.

Before any stage (and never for dry_run=true), the model's config, tokenizer and weights must be
in a local folder, in the Hugging Face cache, or on a hub that answers one request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub

from llmops.cli.preflight import check
from llmops.errors import ConfigError

FIXES = ("Fixes: point model.hub_id at a local model folder; or download it first while online "
         "(`huggingface-cli download {id}`) and run with HF_HUB_OFFLINE=1, which then reads the "
         "filled cache.")
# A preset that fits this CPU: a real run is planned here (a larger one would exit 2 for memory).
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def _llmops(*args: str, cwd: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `python -m llmops ARGS` with an empty HF cache; env values "" unset a variable."""
    full = {**os.environ, "HF_HOME": str(cwd / "hf"), "OMP_NUM_THREADS": "1", **env}
    for key in [k for k, v in env.items() if v == ""]:
        del full[key]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, env=full,
                       capture_output=True, text=True, timeout=300)
    return r, time.perf_counter() - t0


def _written(cwd: Path) -> list[Path]:
    return [p for p in cwd.rglob("*") if p.is_file() and cwd / "hf" not in p.parents]


def test_offline_run_of_an_uncached_preset_exits_2_before_any_stage(tmp_path):
    r, seconds = _llmops("model=qwen0.5b", "lora=r16", cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == (
        "Config is invalid (1 problem):\n"
        f"  - model.hub_id: '{QWEN}' is not in the Hugging Face cache (missing: config.json, "
        "tokenizer, weights) and HF_HUB_OFFLINE is set, so it cannot be downloaded. "
        + FIXES.format(id=QWEN))
    assert seconds < 30, f"took {seconds:.1f} s: the pre-flight must not wait on the hub"
    assert _written(tmp_path) == [], "nothing is written before the pre-flight passes"


def test_an_unreachable_hub_is_asked_once_and_a_dry_run_not_at_all(tmp_path):
    online = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "",
              "TRANSFORMERS_OFFLINE": ""}
    r, seconds = _llmops("model=qwen0.5b", "lora=r16", cwd=tmp_path, **online)
    assert r.returncode == 2, r.stderr[-2000:]
    assert (f"model.hub_id: '{QWEN}' is not in the Hugging Face cache (missing: config.json, "
            "tokenizer, weights) and the hub at http://127.0.0.1:9 could not be asked "
            "(ConnectError: [Errno 111] Connection refused). ") in r.stderr
    assert "Retrying" not in r.stderr
    assert seconds < 30, f"took {seconds:.1f} s: one request, no retries (they take ~49 s)"
    assert _written(tmp_path) == []
    r, _ = _llmops("model=qwen3b", "lora=r16", "hardware=a100_40g", "dry_run=true", cwd=tmp_path,
                   **online)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_failing_hub_gets_one_request_and_its_answer_is_named(tmp_path):
    """One sweep over four repositories the hub cannot give (its pre-flight checks every point
    and lists every problem, as four runs of one point each would)."""
    small = {"config.json": b"{}", "tokenizer.json": b"{}"}  # no weights
    repos = {"acme/small": {"files": small}, "acme/gated": {"files": small, "gated": True},
             "acme/down": {"fail_status": 503}}
    with FakeHub(repos) as hub:
        r, _ = _llmops("-m", "model=qwen0.5b",
                       "model.hub_id=acme/small,acme/gated,acme/missing,acme/down", cwd=tmp_path,
                       HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="", TRANSFORMERS_OFFLINE="")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("Config is invalid (4 problems):\n"), r.stderr[-2000:]
    err = {line.split("'")[1]: line for line in r.stderr.strip().splitlines()[1:]}
    assert err["acme/small"] == (
        f"  - model.hub_id: 'acme/small' on {hub.url} has no weights, so it cannot be loaded as "
        "a causal LM. Pick a model repository with config.json, a tokenizer and weights.")
    assert err["acme/gated"].startswith(
        f"  - model.hub_id: 'acme/gated' is gated on {hub.url}: accept its licence on the model "
        "page and log in (`hf auth login`, or set HF_TOKEN).")
    assert err["acme/missing"].startswith(
        f"  - model.hub_id: 'acme/missing' does not exist on {hub.url} (or is private and no "
        "token is set).")
    assert err["acme/down"].startswith(
        f"  - model.hub_id: 'acme/down' is not in the Hugging Face cache (missing: config.json, "
        f"tokenizer, weights) and the hub at {hub.url} could not be asked (HfHubHTTPError: "
        f"Server error '503 Service Unavailable' for url '{hub.url}/api/models/acme/down'). ")
    assert hub.requests["/api/models/acme/down"] == 1, "a 503 is not retried"
    assert _written(tmp_path) == []


def test_a_local_folder_needs_config_tokenizer_and_weights(real_model, tmp_path):
    folder = real_model("qwen2")
    assert check(["model=hub", f"model.hub_id={folder}", f"store_dir={tmp_path / 's'}"])
    partial = tmp_path / "partial"
    shutil.copytree(folder, partial, ignore=shutil.ignore_patterns("*.safetensors", "tok*"))
    with pytest.raises(ConfigError) as err:
        check(["model=hub", f"model.hub_id={partial}", f"store_dir={tmp_path / 's'}"])
    assert [str(p) for p in err.value.problems] == [
        f"model.hub_id: folder '{partial}' lacks the model's tokenizer, weights (looked for "
        "config.json, one of tokenizer.json, tokenizer.model, vocab.json, and one of "
        "model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
        "pytorch_model.bin.index.json). Save the whole model there (model.save_pretrained and "
        "tokenizer.save_pretrained)."]
    assert check(["model=hub", f"model.hub_id={partial}", "dry_run=true",
                  f"store_dir={tmp_path / 's'}"]), "a dry run only plans"


def test_a_sharded_checkpoint_in_the_cache_needs_every_shard(tmp_path):
    snapshot = tmp_path / "hf" / "hub" / "models--acme--sharded" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("b" * 40)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    for name, text in (("config.json", "{}"), ("tokenizer.json", "{}"),
                       ("model.safetensors.index.json", json.dumps(index)),
                       ("model-00001-of-00002.safetensors", "")):
        (snapshot / name).write_text(text)
    args = ("model=qwen0.5b", "model.hub_id=acme/sharded", "store_dir=s")
    r, _ = _llmops(*args, cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 2
    assert "'acme/sharded' is not in the Hugging Face cache (missing: weights)" in r.stderr


def test_a_sweep_names_every_model_it_cannot_have(tmp_path):
    r, _ = _llmops("-m", "model=qwen0.5b,qwen1.5b", cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert r.returncode == 2, r.stderr[-2000:]
    for hub_id in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"):
        assert f"model.hub_id: '{hub_id}' is not in the Hugging Face cache" in r.stderr
    assert _written(tmp_path) == []
