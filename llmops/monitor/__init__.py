"""Monitoring against the evaluated baseline: `python -m llmops.monitor RUN_DIR`.

The monitor stage (llmops/stages/monitor.py) writes baseline.json, probes.jsonl and
alert_rules.yml; this package probes a live endpoint (or scores a log) against them. The modules
import nothing heavy at import time; the config layer never imports this package.
"""
