"""What a stage receives from the runner besides its params and inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageContext:
    """Run-wide facts a stage may use. A stage never reads the Hydra config.

    Attributes:
        run_dir: The run folder (Hydra's output dir). Stages write only into their out_dir;
            this is for reference (e.g. log messages).
        device: "cpu" or "cuda", decided by the compiler from the hardware config.
        seed: The run's global seed.
        logger: Logger to report progress on ("llmops.stage.<kind>").
        show_progress: Whether to draw progress bars (tqdm) inside the stage.
        threads: Torch CPU threads for training and generation: the plan's run.threads, resolved
            once by llmops.config.resolve (1 for a small model on a CPU, None for torch's
            default). The runner always sets it; 1 here matches the defaults above (tiny, CPU).
    """

    run_dir: Path
    device: str = "cpu"
    seed: int = 0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("llmops.stage"))
    show_progress: bool = True
    threads: int | None = 1
