"""llmops: a declarative config compiler for fine-tuning language models."""

__version__ = "0.1.0"
