"""The pre-flight firewall: composes the config as Hydra's app will and polices what Hydra would
do with it (search path, `_target_` nodes, log files, job environment, secrets, the command line),
so that every problem is reported before Hydra's app runs, all at once, with exit code 2."""
