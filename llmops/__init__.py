"""llmops: a declarative config compiler for fine-tuning language models."""

__version__ = "0.2.0"
