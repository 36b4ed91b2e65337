"""Problem registry: built-in problems by name, user problems as ``package.module:function``.

Example:
    >>> from automtl.problems import get_problem
    >>> problem = get_problem("multidigits", off=3, seed=1)
    >>> problem.input_shape
    (1, 11, 11)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pydantic

from automtl.errors import UserError
from automtl.problems import plugin
from automtl.metrics import accuracy
from automtl.problems.base import DatasetSplit, Problem, ProblemError, Split, Task
from automtl.problems.mnist1d_pair import mnist1d_pair
from automtl.problems.multidigits import multidigits
from automtl.problems.multimnist import multimnist


@dataclass(frozen=True)
class ProblemEntry:
    """A built-in problem: its factory, whose module declares ``DEFAULT_TASKS`` and a one-line summary."""

    factory: Callable[..., Problem]

    @property
    def tasks(self) -> tuple[str, ...]:
        return inspect.getmodule(self.factory).DEFAULT_TASKS

    @property
    def summary(self) -> str:
        first_line = inspect.getdoc(inspect.getmodule(self.factory)).splitlines()[0]
        return first_line.split(": ", 1)[-1]


PROBLEMS: dict[str, ProblemEntry] = {
    "multidigits": ProblemEntry(multidigits),
    "mnist1d-pair": ProblemEntry(mnist1d_pair),
    "multimnist": ProblemEntry(multimnist),
}


def _call(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> Any:
    """Call ``factory(**options)`` with typed validation; errors name the option."""
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(params)) if not takes_kwargs else []
    if unknown:
        raise UserError(f"problem {name!r} has no option {unknown[0]!r}; allowed: {list(params)}")
    try:
        return pydantic.validate_call(factory)(**options)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UserError(
            f"problem {name!r} option {field!r}: {err['msg']} (got {err.get('input')!r})"
        ) from None
    except ProblemError as exc:  # what the factory built does not fit the contract
        raise UserError(f"{name}: {exc}") from None


def get_problem(name: str, seed: int | None = None, **options: Any) -> Problem:
    """Build a registered problem, or a user problem ``package.module:function``.

    ``seed`` is passed on when the factory takes one; unknown or ill-typed
    options raise :class:`~automtl.errors.UserError`.
    """
    if ":" in name:
        factory = plugin.resolve(name)
    elif name in PROBLEMS:
        factory = PROBLEMS[name].factory
    else:
        raise UserError(
            f"problem {name!r} is unknown; allowed: {sorted(PROBLEMS)} "
            "or a user problem 'package.module:function'"
        )
    if seed is not None and "seed" in inspect.signature(factory).parameters:
        options = {**options, "seed": seed}
    return plugin.check_problem(name, _call(name, factory, options))


__all__ = ["PROBLEMS", "DatasetSplit", "Problem", "ProblemEntry", "ProblemError", "Split", "Task", "accuracy",
           "get_problem"]
