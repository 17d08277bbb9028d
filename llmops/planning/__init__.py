"""Pre-flight planning: the memory/time/cost model (compute) and the go/no-go assessment (decide).

Pure Python (math only): the compiler imports these modules, so they must never import torch,
transformers, peft, trl, datasets or wandb.
"""

from llmops.planning.decide import assess
from llmops.planning.fixes import suggest_fixes
from llmops.planning.memory import estimate

__all__ = ["assess", "estimate", "suggest_fixes"]
