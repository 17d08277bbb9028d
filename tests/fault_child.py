"""The real stage process (llmops.runner.child) with one fault injected into training.

tests/runner/test_supervise.py starts it instead of llmops.runner.child (through
`llmops.runner.supervise.CHILD_MODULE`, with tests/ on PYTHONPATH). LLMOPS_TEST_FAULT picks the
fault, raised from the trainer's first training step:
    alloc     a real allocation failure: torch asks the CPU allocator for 4 EiB (RuntimeError
              "DefaultCPUAllocator: can't allocate memory")
    cuda_oom  torch.OutOfMemoryError, as CUDA raises it
    memory    MemoryError, as Python raises it
"""

from __future__ import annotations

import os
import sys


def raising_step(fault: str):
    """Returns a Trainer.training_step that raises the fault (tests/runner/test_supervise.py also
    patches it into the trainer of a stage it runs in its own process)."""
    import torch

    def training_step(self, *args, **kwargs):
        if fault == "alloc":
            torch.empty(2**62, dtype=torch.uint8)
        if fault == "cuda_oom":
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                "15.77 GiB of which 1.02 GiB is free.")
        raise MemoryError()

    return training_step


def _inject() -> None:
    import transformers

    transformers.Trainer.training_step = raising_step(os.environ["LLMOPS_TEST_FAULT"])


if __name__ == "__main__":
    from llmops.runner.child import keep_out, main

    keep_out(sys.argv[3:])  # what main keeps out (FD PID PACKAGE...), before the trainer loads
    _inject()
    sys.exit(main())
