"""Scoring of model answers: tool calls structurally (``tools``, read with ``parsers``), free text
with ROUGE-L and chrF (``text``). Pure Python; no torch."""
