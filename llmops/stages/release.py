"""Stage "release": a model card and a bundle that can be handed over, only for a passed model.

Writes into its folder:
- release/: the chosen formats (adapter/, merged/, gguf/*.gguf), a Modelfile that points at the
  bundled GGUF (its TEMPLATE and stops from the training chat template, checked by rendering), the
  deploy stage's integration_config.json, reports/ (eval, decide, compute, training), the run's
  manifest.json, monitor/ (baseline.json, alert_rules.yml) when the monitor stage ran, the model
  card as README.md and model_card.md, and SHA256SUMS (sha256sum -c format) over all of it;
- <name>-<version>.tar.gz of release/ (release.tarball), written to a temp name and renamed;
- release_report.json.
A model whose eval did not pass its gates is never released (there is no override). Always runs
(the stage table's `always_run`): the bundle carries this run's manifest and deploy's
integration config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmops import __version__
from llmops.compiler.builders.release import ReleaseParams
from llmops.core.context import StageContext
from llmops.core.plan import TRAINING_STAGES, report_name
from llmops.errors import GateFailed, StageError
from llmops.stages.release_bundle import SUMS, files_of, place, place_tree, write_bundle, write_sums
from llmops.stages.release_card import CardFacts, build_card, metrics

REPORT_NAME = report_name("release")
MONITOR_FILES = ("baseline.json", "alert_rules.yml")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def check_gates(inputs: dict[str, Path]) -> dict[str, Any]:
    """Returns the eval report; raises unless it says the model passed every gate.

    Raises:
        StageError: There is no eval report to show the gates passed.
        GateFailed: Eval did not pass its gates (eval.enforce=false let the plan go on).
    """
    report = _json(Path(inputs["eval"]) / report_name("eval")) if inputs.get("eval") else None
    if report is None:
        raise StageError("release: no eval_report.json, so nothing shows the model passed its "
                         "gates. Run with eval=default, or use release=none.")
    if report.get("passed") is not True:
        failed = [str(g.get("name")) for g in report.get("gates", [])
                  if not g.get("passed", True)]
        raise GateFailed(
            f"release: refusing to release a model that failed its gates "
            f"({', '.join(failed) or 'see eval_report.json'}); nothing was released. Improve the "
            "model or the gates (eval.gates.<name>.threshold=...) and rerun.")
    return report


def _modelfile(params: dict, export: Path, gguf_rel: str, out: Path) -> dict[str, Any]:
    """Writes out (a Modelfile FROM the bundled GGUF); returns its template check and stops."""
    from llmops.serving import modelfile as mf
    from llmops.stages.common import export_tokenizer

    tokenizer = export_tokenizer(export / "merged")
    built = mf.checked_modelfile(tokenizer, params["model"]["chat_template"], f"./{gguf_rel}",
                                 params["model"]["context_length"], "release")
    out.write_text(built["text"], encoding="utf-8")
    return {"template_identical": built["check"]["identical"],
            "template_equivalent": built["check"]["equivalent"], "family": built["family"],
            "stop": built["stop"], "from": f"./{gguf_rel}"}



def _formats(params: dict, inputs: dict[str, Path], rel: Path) -> dict[str, Any]:
    """Places the chosen formats under rel; returns what went where (and the Modelfile's check)."""
    files: dict[str, Any] = {}
    if inputs.get("export") is None:  # train.backend=openai: nothing was exported
        return files
    export = Path(inputs["export"])
    for fmt in ("adapter", "merged"):
        if fmt in params["formats"]:
            if not (export / fmt).is_dir():
                raise StageError(f"release: the export stage wrote no {fmt}/ ({export}). Add "
                                 f"{fmt} to deploy.formats, or drop it from release.formats.")
            place_tree(export / fmt, rel / fmt)
            files[fmt] = f"{fmt}/"
    if "gguf" in params["formats"]:
        gdir = Path(inputs["gguf"])
        greport = _json(gdir / report_name("gguf")) or {}
        ggufs = {q: f"gguf/{f['path']}" for q, f in (greport.get("files") or {}).items()}
        for path in ggufs.values():
            place(gdir / Path(path).name, rel / path)
        serve = ggufs[params["serve_quantization"]]
        files["gguf"] = [serve, *(p for p in ggufs.values() if p != serve)]
        files["modelfile_check"] = _modelfile(params, export, serve, rel / "Modelfile")
        files["modelfile"] = "Modelfile"
    return files


def _reports(inputs: dict[str, Path], rel: Path, ctx: StageContext) -> dict[str, Any]:
    """Places the reports, the integration config, the manifest and the monitor files under rel."""
    placed: dict[str, Any] = {"reports": [], "monitor": []}
    for stage in ("eval", "decide", "compute", *TRAINING_STAGES, "merge"):
        if inputs.get(stage) is not None and (Path(inputs[stage]) / report_name(stage)).is_file():
            place(Path(inputs[stage]) / report_name(stage), rel / "reports" / report_name(stage))
            placed["reports"].append(f"reports/{report_name(stage)}")
    if inputs.get("deploy") is not None:
        config = Path(inputs["deploy"]) / "integration_config.json"
        if config.is_file():
            place(config, rel / "integration_config.json")
            placed["integration_config"] = "integration_config.json"
    if inputs.get("monitor") is not None:
        for name in MONITOR_FILES:
            found = sorted(Path(inputs["monitor"]).rglob(name))
            if found:
                place(found[0], rel / "monitor" / name)
                placed["monitor"].append(f"monitor/{name}")
    manifest = Path(ctx.run_dir) / "manifest.json"
    if manifest.is_file():  # a snapshot: every stage before release is recorded in it
        shutil.copy2(manifest, rel / "manifest.json")
        placed["manifest"] = "manifest.json"
    else:
        ctx.logger.warning("release: no manifest.json in %s; the release goes without it",
                           ctx.run_dir)
    return placed


def _data_hashes(inputs: dict[str, Path]) -> dict[str, str]:
    from llmops.core.fingerprint import file_sha256

    data = inputs.get("data")
    if data is None:
        return {}
    return {f.name: f"sha256:{file_sha256(f)}" for f in sorted(Path(data).glob("*.jsonl"))}


def _card(facts: CardFacts, rel: Path) -> dict[str, Any]:
    """Writes the card as README.md and model_card.md; checks that it loads back intact."""
    from huggingface_hub import ModelCard

    card = build_card(facts)
    card.save(rel / "README.md")
    shutil.copy2(rel / "README.md", rel / "model_card.md")
    loaded = ModelCard.load(rel / "model_card.md")  # raises on a model-index it cannot parse
    results = loaded.data.eval_results or []
    if len(results) != len(metrics(facts.eval)):
        raise StageError(f"release: the model card's model-index holds {len(results)} results, "
                         f"expected {len(metrics(facts.eval))}; this is a bug in llmops.")
    return {"card": "model_card.md", "eval_results": len(results),
            "metadata_keys": sorted(loaded.data.to_dict())}


def run(params: ReleaseParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Releases the evaluated model: release/ with card and SHA256SUMS, and the .tar.gz bundle.

    Params read: name, version, formats, license, tags, tarball, model (facts), method, usecase,
    dataset, tuned, serve_quantization. Inputs: "eval", "export", the training stages, and when
    the plan has them "decide", "compute", "data", "gguf", "deploy", "monitor", "base".

    Returns:
        The release report (also written as release_report.json).

    Raises:
        GateFailed: Eval did not pass its gates.
        StageError: An input the release needs is missing.
    """
    from llmops.files import write_json

    out_dir = Path(out_dir)
    eval_report = check_gates(inputs)
    rel = out_dir / "release"
    rel.mkdir(parents=True)
    files = _formats(params, inputs, rel)
    placed = _reports(inputs, rel, ctx)
    hashes = _data_hashes(inputs)
    training = {k: r for k in (*TRAINING_STAGES, "merge") if inputs.get(k) is not None
                and (r := _json(Path(inputs[k]) / report_name(k))) is not None}
    decide = _json(Path(inputs["decide"]) / report_name("decide")) if inputs.get("decide") \
        else None
    compute = _json(Path(inputs["compute"]) / report_name("compute")) if inputs.get("compute") \
        else None
    integration = _json(rel / "integration_config.json")
    listing = [*(files.get(f) for f in ("adapter", "merged")), *(files.get("gguf") or []),
               files.get("modelfile"), placed.get("integration_config"), *placed["reports"],
               placed.get("manifest"), "README.md", "model_card.md", SUMS]
    facts = CardFacts(params=params, eval=eval_report, data_hashes=hashes, files={
        **files, "listing": [x for x in listing if x]}, decide=decide, compute=compute,
        training=training, integration=integration, monitor=placed["monitor"],
        llmops_version=__version__)
    card = _card(facts, rel)
    sums = write_sums(rel)
    top = f"{params['name']}-{params['version']}"
    bundle = None
    if params["tarball"]:
        from llmops.core.fingerprint import file_sha256

        path = out_dir / f"{top}.tar.gz"
        write_bundle(rel, path, top)
        bundle = {"path": path.name, "top": top, "sha256": file_sha256(path),
                  "bytes": path.stat().st_size}
    report = {
        "name": params["name"], "version": params["version"], "formats": params["formats"],
        "license": params["license"], "folder": "release", "files": len(files_of(rel)),
        "bytes": sum((rel / p).stat().st_size for p in files_of(rel)), "sha256sums": len(sums),
        "model_card": {**card, "path": "release/model_card.md"}, "bundle": bundle,
        "gates": {"eval_passed": True, "applied": [g.get("name") for g in eval_report["gates"]
                                                   if not g.get("skipped")]},
        "modelfile": files.get("modelfile_check"), "monitor": placed["monitor"],
        "manifest": placed.get("manifest"), "data_hashes": hashes,
    }
    ctx.logger.info("release: %s %s -> %s%s", params["name"], params["version"], rel,
                    f" + {bundle['path']}" if bundle else "")
    write_json(out_dir / REPORT_NAME, report)
    return report
