"""Who goes on from a rung: the promotion rules of :mod:`automtl.rungs`, selected by ``rungs.promote``.

Each rule takes the objective values judged at one rung (rows, every column
maximised), the row of the trial being judged and the cut (``ceil(n /
reduction)``), and says whether that trial goes on. ``rank`` (MO-ASHA, as
syne-tune's ``MOASHA`` ranks): non-dominated, or among the best ``cut`` by
non-dominated rank then NSGA-II's crowding distance. ``hypervolume``: among the
``cut`` largest exclusive shares of the rung's hypervolume, so a dominated plan
never goes on.

Example:
    >>> import numpy as np
    >>> points = np.array([[0.5, 0.9], [0.9, 0.9], [0.4, 0.8]])
    >>> PROMOTIONS["rank"](points, 0, 1), PROMOTIONS["hypervolume"](points, 1, 1)
    (False, True)
"""

from __future__ import annotations

from typing import Callable

import moocore
import numpy as np


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each point within ``points`` (the ends of every objective: inf)."""
    n, distance = len(points), np.zeros(len(points))
    if n <= 2:
        return np.full(n, np.inf)
    for column in points.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        distance[order[[0, -1]]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance


def ranking(points: np.ndarray) -> list[int]:
    """Indices of ``points`` (rows, every column maximised) best first: non-dominated rank, crowding, index."""
    ranks = moocore.pareto_rank(points, maximise=True)
    crowd = np.zeros(len(points))
    for rank in np.unique(ranks):
        members = np.flatnonzero(ranks == rank)
        crowd[members] = crowding(points[members])
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def _by_rank(points: np.ndarray, own: int, cut: int) -> bool:
    """Non-dominated, or among the best ``cut`` by :func:`ranking`."""
    if moocore.is_nondominated(points, maximise=True, keep_weakly=True)[own]:
        return True
    return ranking(points).index(own) < cut


def contributions(points: np.ndarray) -> np.ndarray:
    """Each point's exclusive share of the hypervolume of ``points`` (rows, every column maximised), above
    a reference just below the worst value of each column (1 % of its span, or 1e-9): 0 for a dominated
    point, positive for every other."""
    low, high = points.min(axis=0), points.max(axis=0)
    reference = low - np.maximum(0.01 * (high - low), 1e-9)
    return moocore.hv_contributions(points, ref=reference, maximise=True)


def _by_hypervolume(points: np.ndarray, own: int, cut: int) -> bool:
    """Among the ``cut`` largest shares of the hypervolume, and a positive share (never a dominated plan)."""
    shares = contributions(points)
    if shares[own] <= 0:
        return False
    order = sorted(range(len(points)), key=lambda i: (-shares[i], i))
    return order.index(own) < cut


PROMOTIONS: dict[str, Callable[[np.ndarray, int, int], bool]] = {"rank": _by_rank, "hypervolume": _by_hypervolume}
