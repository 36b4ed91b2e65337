"""The dense reference: the model every trial starts from and is compared with.

It is either **trained** by automtl (:func:`trained`: once, cached under a
digest of everything that determines it) or **given** (:func:`given`): a
state-dict file (``dense.weights``), a trained module passed to
:func:`automtl.search` (``model=``), or the model the problem's factory returns
(``dense.train: false``). A given model is loaded into the problem's
architecture with its keys and shapes checked, never retrained, identified by
the digest of its tensors, and kept in the run directory (:data:`REFERENCE`),
so that resumes and workers read the very same weights.

Example:
    >>> import tempfile, torch
    >>> from automtl import get_problem
    >>> problem = get_problem("multidigits", train_pairs=200, eval_pairs=100)
    >>> path = tempfile.mkdtemp() + "/trained.pt"
    >>> torch.save(problem.build_model().state_dict(), path)
    >>> fits_model(problem.build_model(), read_state(path), path) is None
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from automtl import checkpoints
from automtl.errors import UserError
from automtl.models import ModelSpec
from automtl.problems.base import Problem
from automtl.train import TrainConfig, fit

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".pth", ".safetensors")
REFERENCE = "dense/reference.pt"  # a given reference's copy, relative to the run directory
SHOWN = 5  # keys named in an error


@dataclass
class DenseModel:
    """The dense reference and where it came from: ``source`` is ``trained`` (``cached``: read from the
    cache at ``path``), ``weights`` (the file ``path``), ``module`` or ``factory``; ``digest`` identifies a
    given one's tensors."""

    model: nn.Module
    path: Path | None
    cached: bool
    seconds: float
    source: str = "trained"
    digest: str | None = None

    @property
    def given(self) -> bool:
        return self.source != "trained"

    def record(self) -> dict:
        """What the study keeps of it (:func:`automtl.records.dense_reference`)."""
        return {"source": self.source, "digest": self.digest, "path": str(self.path) if self.path else None}


def cache_key(problem: Problem, spec: ModelSpec, config: TrainConfig, seed: int) -> str:
    """Digest of everything that determines the trained dense weights."""
    identity = {
        "problem": problem.name,
        "options": {k: str(v) for k, v in problem.options.items()},
        "data": problem.fingerprint(),
        "model": spec.as_dict(),
        "train": config.identity(),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def trained(
    problem: Problem, spec: ModelSpec, config: TrainConfig, seed: int, cache_dir: str | Path,
    device: torch.device | str = "cpu",
) -> DenseModel:
    """Load the cached dense network for this key, or train it once (on ``device``) and cache it.

    The model comes back on the CPU. A corrupt cache file is reported, discarded and retrained.
    """
    path = Path(cache_dir) / f"dense-{problem.name.replace(':', '_')}-{cache_key(problem, spec, config, seed)}.pt"
    torch.manual_seed(seed)
    model = problem.build_model(spec)
    if path.exists():
        try:
            state, _ = checkpoints.load(path)
            model.load_state_dict(state)
            return DenseModel(model, path, cached=True, seconds=0.0)
        except checkpoints.CorruptCheckpoint as exc:
            log.warning("%s; retraining the dense model", exc)
        except RuntimeError as exc:  # shapes do not fit this model
            log.warning("cached dense checkpoint %s does not fit the model (%s); retraining", path, exc)
    start = time.perf_counter()
    fit(model.to(device), problem.to(device), config, seed)
    model.cpu()
    seconds = time.perf_counter() - start
    checkpoints.save(path, model.state_dict(), {
        "problem": problem.name, "model": spec.as_dict(), "train": asdict(config), "seed": seed,
        "seconds": seconds,
    })
    return DenseModel(model, path, cached=False, seconds=seconds)


HOW_TO_SAVE = ("save the weights alone: torch.save(model.state_dict(), 'model.pt') or "
               "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def read_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``: ``.safetensors``, or ``.pt``/``.pth`` loaded with ``weights_only=True``
    (a plain state dict, one under ``state_dict`` or ``model``, or an automtl checkpoint, verified).
    Raises :class:`UserError` saying what is wrong with the file."""
    path = Path(path)
    where = f"dense.weights {path}"
    if path.suffix not in SUFFIXES:
        raise UserError(f"{where}: unknown file type {path.suffix or '(none)'!r}; allowed: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise UserError(f"{where} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{where} is not a readable safetensors file ({exc})") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{where} holds more than tensors (a pickled module or objects), which loading with "
                        f"weights_only=True refuses because unpickling them runs code ({str(exc).splitlines()[-1][:160]}); "
                        f"{HOW_TO_SAVE}") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file: all unreadable
        raise UserError(f"{where} is not a readable torch file ({type(exc).__name__}: {exc})") from None
    if isinstance(payload, Mapping) and {"state", "meta", "sha256"} <= set(payload):
        return checkpoints.load(path)[0]  # written by automtl (automtl train, the dense cache)
    for key in ("state_dict", "model"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not payload or not all(isinstance(v, Tensor) for v in payload.values()):
        found = (f"a mapping with keys {sorted(map(str, payload))[:SHOWN]}" if isinstance(payload, Mapping)
                 else f"a {type(payload).__name__}")
        raise UserError(f"{where} holds {found}, not a state dict (parameter name -> tensor); {HOW_TO_SAVE}")
    return dict(payload)


def fits_model(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Raise :class:`UserError` naming the missing and unexpected keys and the shape mismatches when
    ``state`` does not load into ``model`` exactly (strictly, every key)."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            more = f" (and {len(keys) - SHOWN} more)" if len(keys) > SHOWN else ""
            problems.append(f"{label} {keys[:SHOWN]}{more}")
    shapes = [f"{k}: expected {list(expected[k].shape)}, found {list(state[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:SHOWN]))
    if unexpected and all(k.startswith("module.") for k in unexpected):
        problems.append("the keys start with 'module.': save model.module.state_dict() of a DataParallel model")
    if problems:
        raise UserError(f"{where} does not fit the problem's model ({type(model).__name__}): " + "; ".join(problems))


def given(problem: Problem, spec: ModelSpec, seed: int, weights: str | None, train: bool,
          module: nn.Module | None = None) -> DenseModel | None:
    """The given dense reference (``module``, else the file ``weights``, else with ``train`` false the
    factory's model as built), loaded into the problem's architecture; None when automtl trains it."""
    if module is not None and weights is not None:
        raise UserError("both dense.weights and model= give the dense model; pass one of them")
    torch.manual_seed(seed)
    model = problem.build_model(spec)
    if module is not None:
        source, state, where = "module", module.state_dict(), f"model= ({type(module).__name__})"
    elif weights is not None:
        source, state, where = "weights", read_state(weights), f"dense.weights {weights}"
    elif not train:
        source, state, where = "factory", model.state_dict(), "the factory's model"
    else:
        return None
    fits_model(model, state, where)
    model.load_state_dict(state)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return DenseModel(model.eval(), Path(weights) if weights else None, cached=False, seconds=0.0, source=source,
                      digest=checkpoints.digest(state, ""))


def keep(reference: DenseModel, run_dir: Path) -> None:
    """Store a given reference in the run directory (:data:`REFERENCE`)."""
    checkpoints.save(run_dir / REFERENCE, reference.model.state_dict(), reference.record())


def stored(problem: Problem, spec: ModelSpec, run_dir: Path) -> DenseModel | None:
    """The given reference a run directory keeps, None if it keeps none."""
    path = run_dir / REFERENCE
    if not path.exists():
        return None
    state, meta = checkpoints.load(path)
    model = problem.build_model(spec)
    fits_model(model, state, str(path))
    model.load_state_dict(state)
    return DenseModel(model.eval(), Path(meta["path"]) if meta.get("path") else None, cached=True, seconds=0.0,
                      source=meta["source"], digest=meta["digest"])
