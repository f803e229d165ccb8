"""Sparse-training mechanism: masks, per-layer densities, pruning scores and drop/grow (pure pieces).

Methods (SNIP, RigL, ... as training-loop plug-ins) live in ``drt.methods`` and call these.
"""

from drt.sparse.distributions import (
    DISTRIBUTIONS,
    KINDS,
    check_sparsity,
    global_topk,
    kept_total,
    layer_counts,
    layer_densities,
    mask_info,
    masks_from_scores,
)
from drt.sparse.dst import (
    DropGroups,
    DropGrowInfo,
    DropScore,
    ExplorationTracker,
    GrowCounts,
    by_sign,
    cosine_drop_fraction,
    drop_grow_,
    grad_magnitude,
    granet_prune_,
    granet_sparsity,
    redistribute,
    rigl_drop_fraction,
)
from drt.sparse.masks import MaskSet, check_ranks_agree, prunable, zero_state_
from drt.sparse.scores import (
    force,
    grasp_scores,
    iterative_snip,
    magnitude_scores,
    random_scores,
    snip_scores,
    synflow_prune,
    synflow_scores,
)

__all__ = [
    "DISTRIBUTIONS", "KINDS", "DropGroups", "DropGrowInfo", "DropScore", "ExplorationTracker", "GrowCounts", "MaskSet",
    "by_sign", "check_ranks_agree", "check_sparsity",
    "cosine_drop_fraction", "drop_grow_", "force", "global_topk", "grad_magnitude", "granet_prune_",
    "granet_sparsity", "grasp_scores", "iterative_snip", "kept_total", "layer_counts", "layer_densities",
    "magnitude_scores", "mask_info", "masks_from_scores", "prunable", "random_scores", "redistribute",
    "rigl_drop_fraction", "snip_scores", "synflow_prune", "synflow_scores", "zero_state_",
]
