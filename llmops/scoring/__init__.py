"""Scoring of model answers: the eval metrics and their names (``metrics``), quality gates on them
(``gates``), tool calls structurally (``tools``, read with ``parsers``), free text with ROUGE-L and
chrF (``text``). Pure Python; no torch."""
