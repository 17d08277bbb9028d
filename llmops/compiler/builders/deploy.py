"""The deploy stage's params and builder: the GGUF served and smoke-tested. Pure.

The deploy stage (ollama, openai) needs the gguf stage; a plan whose target is local gets none, so
its fingerprints stay as they were. Its inputs are {"gguf", "export", "eval" (when eval runs),
"data"}; it writes integration_config.json, smoke_test.json and deploy_report.json.
"""

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import ApiModelParams, ModelParams
from llmops.compiler.builders.gguf import data_needs
from llmops.compiler.inputs import PlanBuilder, StageInputs, api_model


class DeployModelParams(ModelParams):
    """The model as deploy sees it: the stages' model and its context."""

    context_length: int
    """model.context_length (the Modelfile's num_ctx)."""


class OllamaParams(TypedDict):
    """deploy.ollama.*: where `ollama create` goes, and under which name."""

    host: str
    model_name: str | None
    """None: llmops-<model.name>."""
    timeout_s: float


class OpenAIServeParams(TypedDict):
    """deploy.openai.*: the local OpenAI-compatible server and its smoke test."""

    host: str
    allow_public_bind: bool
    port: int
    """0: a free port."""
    startup_timeout_s: float
    smoke_prompts: list[str]
    """Empty: n_smoke held-out test prompts."""
    n_smoke: int
    max_tokens: int


class DeployParams(TypedDict):
    """Params of the deploy stage (deploy=ollama, openai; after gguf). The stage always runs
    (the stage table's `always_run`): its effects live outside its folder."""

    target: str
    """ollama or openai."""
    model: DeployModelParams
    serve_quantization: str
    """The GGUF type served (``GgufConfig.served``: the first one written)."""
    allow_failed_gates: bool
    """Deploy even when eval did not pass its gates (or did not run)."""
    eval_enabled: bool
    """The plan has an eval stage."""
    eval_enforce: bool
    max_new_tokens: int
    """eval.max_new_tokens."""
    http_total_seconds: float
    """limits.http_total_seconds: each smoke request in all."""
    ollama: NotRequired[OllamaParams]
    """Only for target ollama."""
    openai: NotRequired[OpenAIServeParams]
    """Only for target openai."""
    keep_serving: NotRequired[bool]
    api: NotRequired[ApiModelParams]
    """Only with train.backend=openai (target openai_api): the fine-tuned model stays at OpenAI;
    the stage smoke-tests its id (deploy.openai's n_smoke, smoke_prompts, max_tokens) and writes
    integration_config.json naming it."""
    """Only for target openai: leave the server running afterwards."""


def add_deploy(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the deploy stage (deploy=ollama, openai, after gguf): serve and smoke-test the GGUF."""
    cfg = s.cfg
    dp, g = cfg.deploy, cfg.deploy.gguf
    api = api_model(s)
    if api is not None:
        if dp.target != "none" and b.has("sft"):
            _add_api_deploy(b, s, api)
        return
    if dp.target not in ("ollama", "openai") or not b.has("gguf"):
        return
    has_eval = b.has("eval")
    params: DeployParams = {
        "target": dp.target, "model": {**s.model, "context_length": cfg.model.context_length},
        "serve_quantization": g.served, "allow_failed_gates": dp.allow_failed_gates,
        "eval_enabled": has_eval, "eval_enforce": cfg.eval.enforce,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "http_total_seconds": cfg.limits.http_total_seconds,
    }
    if dp.target == "ollama":
        params["ollama"] = OllamaParams(**dp.ollama.model_dump())
        what = f"Modelfile from the {cfg.model.chat_template} template; ollama create at " \
               f"{dp.ollama.host} when reachable"
    else:
        params["openai"] = OpenAIServeParams(**dp.openai.model_dump())
        params["keep_serving"] = dp.keep_serving
        what = (f"serve {g.served} GGUF on {dp.openai.host} (llama-cpp-python), smoke "
                f"test via the openai client{', keep serving' if dp.keep_serving else ''}")
    b.add("deploy", params, ["gguf", "export", *(["eval"] if has_eval else []), *data_needs(b)],
          what)


def _add_api_deploy(b: PlanBuilder, s: StageInputs, api: ApiModelParams) -> None:
    """Adds the deploy stage of train.backend=openai (deploy=local): integration_config.json and
    a smoke test naming the fine-tuned model id (no export, no GGUF, no server)."""
    cfg, has_eval = s.cfg, b.has("eval")
    params: DeployParams = {
        "target": "openai_api", "model": {**s.model, "context_length": cfg.model.context_length},
        "serve_quantization": "none", "allow_failed_gates": cfg.deploy.allow_failed_gates,
        "eval_enabled": has_eval, "eval_enforce": cfg.eval.enforce,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "http_total_seconds": cfg.limits.http_total_seconds,
        "openai": OpenAIServeParams(**cfg.deploy.openai.model_dump()), "api": api}
    b.add("deploy", params, ["sft", *(["eval"] if has_eval else []), *data_needs(b)],
          f"the fine-tuned {api['model']} at OpenAI: integration_config.json naming its id, "
          f"smoke test via the openai client")
