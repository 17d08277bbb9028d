"""Pre-flight planning: the memory/time/cost model (compute) and the go/no-go assessment (decide).

Pure Python (math only) on plain values: the compiler imports these modules, so they must never
import torch, transformers, peft, trl, datasets or wandb; and they sit below llmops.config, so they
never import it (or read llmops.conf): config hands them dicts, and the option files a fix names as
a catalog (``fixes.Catalog``).
"""

from llmops.planning.decide import assess
from llmops.planning.fixes import suggest_fixes
from llmops.planning.memory import estimate

__all__ = ["assess", "estimate", "suggest_fixes"]
