"""Tracking: every job writes metrics.json (metrics.py); W&B is an optional sink (wandb_sink.py).

jobs.py holds what both sinks, the sweep commands and compare read about a job: its overrides,
its sweep and the command that reruns it.
"""
