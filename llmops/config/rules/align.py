"""Cross-field rules of DPO, merging and lm-eval (run by rules.cross_field)."""

from __future__ import annotations

from pathlib import Path

from llmops.config.schema import AppConfig
from llmops.core.plan import METHOD_STAGES, PREFERENCE_STAGES, TRAINING_STAGES
from llmops.data import formats
from llmops.env import Environment
from llmops.errors import Problem

LOCAL_LM_EVAL_TASKS = ("llmops_task_api_choice", "llmops_task_api_call")
STAGE_ADAPTERS = TRAINING_STAGES


def _is_adapter(path: str) -> bool:
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def alignment_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problems of the preference methods (train.dpo, data.preference_path), merge
    and eval.lm_eval."""
    out: list[Problem] = []
    t, m, d = cfg.train, cfg.merge, cfg.data
    planned = METHOD_STAGES[t.method]
    dpo = any(k in planned for k in PREFERENCE_STAGES)  # trains on preference pairs
    if (dpo or "grpo" in planned) and not cfg.lora.enabled:
        out.append(Problem("lora", f"train.method={t.method} trains a LoRA adapter "
                                   "(got lora=none). Use lora=r16."))
    if dpo and d.preference_path and (kind := formats.not_regular(d.preference_path)):
        out.append(Problem("data.preference_path", f"{Path(d.preference_path).expanduser()} is "
                                                   f"{kind}, not a regular file. Point it at a "
                                                   "JSONL of prompt/chosen/rejected rows."))
    elif dpo and d.preference_path and not Path(d.preference_path).expanduser().is_file():
        out.append(Problem(
            "data.preference_path",
            f"file not found: {Path(d.preference_path).expanduser().resolve()}. Point it at a "
            "JSONL of prompt/chosen/rejected rows, or set it to null to derive pairs from the "
            "data.",
        ))
    if "grpo" in planned:
        # Only GRPO names rewards: the scorers' imports (jsonschema, regex) stay out of other runs.
        from llmops.scoring.rewards import free_text_problems, unknown_rewards

        g = t.grpo
        out += [Problem("train.grpo.rewards", m) for m in unknown_rewards(list(g.rewards))]
        out += [Problem("train.grpo.free_text", m)
                for m in free_text_problems(g.rewards, g.free_text)]
        if not g.rewards:
            out.append(Problem("train.grpo.rewards", "is empty; name at least one reward, e.g. "
                                                     "{exact_match: 1.0}."))
        n = g.num_generations
        if (g.batch_size or n) % n:
            fit = n * max(1, (g.batch_size or 0) // n)
            out.append(Problem("train.grpo.batch_size",
                               f"{g.batch_size} is not a multiple of train.grpo.num_generations "
                               f"({n}): each prompt's completions share a step. Use {fit}."))
    if "kto" in planned and (t.kto.batch_size or t.batch_size) == 1:
        out.append(Problem("train.kto.batch_size" if t.kto.batch_size else "train.batch_size",
                           "is 1; KTO's KL term pairs each row with another row's answer in the "
                           "batch. Set train.kto.batch_size=2 or more."))
    init = t.dpo.init_adapter
    if init and t.method != "dpo":
        out.append(Problem("train.dpo.init_adapter",
                           f"is used by train=dpo only (got train.method={t.method}). "
                           "sft_dpo starts from the SFT adapter; set it to null."))
    elif init and not _is_adapter(init):
        out.append(Problem("train.dpo.init_adapter",
                           f"{Path(init).expanduser().resolve()} holds no adapter_config.json. "
                           "Point it at a PEFT adapter folder, or null for a new adapter."))
    if m.method != "none":
        trained = {k: k in planned for k in TRAINING_STAGES}
        if not m.adapters and not any(trained.values()):
            out.append(Problem("merge.adapters", "is empty and the plan trains no adapter "
                                                 "(train=none). List adapter folders, or use "
                                                 "merge=none."))
        if not m.adapters and trained["sft"] and not cfg.lora.enabled:
            out.append(Problem("merge", "lora=none trains a full model: there is no adapter to "
                                        "merge. Use merge=none."))
        for i, name in enumerate(m.adapters):
            key = f"merge.adapters[{i}]"
            if name in STAGE_ADAPTERS:
                if not trained[name]:
                    out.append(Problem(key, f"'{name}' is not trained by train.method={t.method}. "
                                            f"Use train=sft_{name if name != 'sft' else 'dpo'}"
                                            ", or an adapter folder."))
                elif not cfg.lora.enabled:
                    out.append(Problem(key, f"'{name}' trains no adapter with lora=none. "
                                            "Use lora=r16."))
            elif not _is_adapter(name):
                out.append(Problem(key, f"'{name}' is neither a training stage "
                                        f"({', '.join(STAGE_ADAPTERS)}) nor a folder holding "
                                        "adapter_config.json."))
        if m.weights and m.adapters and len(m.weights) != len(m.adapters):
            out.append(Problem("merge.weights",
                               f"has {len(m.weights)} weights for {len(m.adapters)} "
                               "adapter(s); give one weight per adapter, or [] for 1.0 each."))
    le = cfg.eval.lm_eval
    if le.tasks and cfg.eval.enabled:
        if not env.has("lm_eval"):
            out.append(Problem("eval.lm_eval.tasks", "need lm-evaluation-harness, which is not "
                                                     "installed. pip install 'llmops[lm_eval]'."))
        for task in le.tasks:
            if task.startswith("llmops_") and task not in LOCAL_LM_EVAL_TASKS:
                out.append(Problem("eval.lm_eval.tasks",
                                   f"unknown local task '{task}'. Local tasks: "
                                   f"{', '.join(LOCAL_LM_EVAL_TASKS)}."))
    return out
