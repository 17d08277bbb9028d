"""The ground floor every layer stands on: the stage table (`plan`), fingerprints, StageContext.

Pure and light (no torch, no config): config, compiler, store, backends, stages, runner and the
commands all import from here, and it imports only errors, env, files and the pure data library.
"""
