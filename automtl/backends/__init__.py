"""Who runs the trials: a registry of backends selected by ``backend.name``.

A backend module exposes ``preflight(config)``, which refuses what cannot run
before anything is written, ``ships_datasets(config)``, whether its workers can receive a
problem object whose splits are Datasets, ``trial_threads(config)``, the torch threads one trial computes
with, and ``run(run_dir, config, bench, on_progress)``,
which runs the study in ``run_dir`` to its budget (the caller holds the
run-directory lock).
Backends differ only in who runs :func:`automtl.trial.run`, never in what it
does. Modules are imported on first use, so Ray is only loaded when asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {"local": "automtl.backends.local", "ray": "automtl.backends.ray"}


def get_backend(name: str) -> ModuleType:
    """The backend module registered as ``name``."""
    return importlib.import_module(BACKENDS[name])
