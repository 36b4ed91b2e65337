"""``clustering``: structured removal of units with rare activation patterns (K-means)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from automtl.pruning.probe import unit_activations
from automtl.pruning.registry import Strategy, ThresholdSpec, register

if TYPE_CHECKING:
    from automtl.pruning.context import PruneContext


CLUSTERS = 8  # the same k on every layer, so an even split gives each cluster a share of 1/8


def cluster_shares(patterns: np.ndarray, seed: int) -> np.ndarray:
    """Each row's cluster share (cluster size / rows); K-means on unit-norm rows, k = min(8, rows)."""
    rows = len(patterns)
    k = min(rows, CLUSTERS)
    norms = np.linalg.norm(patterns, axis=1, keepdims=True)
    unit_patterns = np.divide(patterns, norms, out=np.zeros_like(patterns), where=norms > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate patterns (dead units) may yield < k clusters
        labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(unit_patterns)
    return np.bincount(labels, minlength=k)[labels] / rows


@register
class Clustering(Strategy):
    """Cluster a group's units by activation pattern (all sites); remove units in clusters holding at most tau_k of the group."""

    name = "clustering"
    structured = True
    threshold = ThresholdSpec(
        "tau_k", "share of the group's alive units held by a cluster (k = 8, so an even split is 0.125)", 0.0, 1.0
    )

    def prune(self, model: nn.Module, ctx: PruneContext, value: float) -> int:
        acts = unit_activations(model, ctx.groups, ctx.calibration.inputs)
        removed = 0
        for group in ctx.groups:
            alive = group.alive()
            if int(alive.sum()) < 2:
                continue
            patterns = torch.cat(acts[group.name])[:, alive.to(acts[group.name][0].device)]
            shares = cluster_shares(patterns.T.double().cpu().numpy(), ctx.seed)
            remove = torch.zeros_like(alive)
            remove[alive] = torch.from_numpy(shares <= value)
            removed += group.remove(remove, self.name)
        return removed
