"""User problems named ``package.module:function``.

The function is called with the problem options as keyword arguments and must
return a :class:`~automtl.problems.base.Problem`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from automtl.errors import UserError
from automtl.problems.base import Problem


def resolve(reference: str) -> Callable[..., Any]:
    """Import ``package.module:function`` and return the function."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(
            f"user problem {reference!r} must be written 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"user problem {reference!r}: cannot import module {module_name!r} ({exc}); "
            "is it installed or on PYTHONPATH?"
        ) from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise UserError(f"user problem {reference!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise UserError(f"user problem {reference!r}: {attr!r} is not callable")
    return target


def check_problem(reference: str, result: Any) -> Problem:
    """Refuse anything a factory returned that is not a Problem."""
    if not isinstance(result, Problem):
        raise UserError(
            f"user problem {reference!r} returned {type(result).__name__}; "
            "it must return automtl.Problem"
        )
    return result
