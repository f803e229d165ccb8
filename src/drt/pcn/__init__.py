"""Principal Component Networks (Waleffe & Rekatsinas 2020): shrink layers by PCA of their inputs.

Use in any PyTorch loop::

    stats = drt.pcn.collect(model, batches)          # eval-mode input statistics, streaming
    small = drt.pcn.compress(model, stats, keep=0.99) # new model; `model` untouched
    spec = drt.pcn.pcn_spec(small)                    # + small.state_dict() = a loadable checkpoint
    big = drt.pcn.expand(small)                       # plain layers again, same function
"""

from drt.pcn.graph import channel_spaces
from drt.pcn.layers import PCNConv1d, PCNConv2d, PCNLayer, PCNLinear, to_pcn
from drt.pcn.narrow import narrow_
from drt.pcn.plan import choose_plans_, plan_of
from drt.pcn.select import parse_keep, plan_components, subspace_overlaps
from drt.pcn.spec import pcn_spec, rebuild
from drt.pcn.stats import PCNStats, collect, eligible_layers
from drt.pcn.transform import compress, expand, pcn_layers

__all__ = [
    "PCNConv1d", "PCNConv2d", "PCNLayer", "PCNLinear", "PCNStats", "channel_spaces", "choose_plans_", "collect",
    "compress", "eligible_layers", "expand", "narrow_", "parse_keep", "pcn_layers", "pcn_spec", "plan_components",
    "plan_of", "rebuild", "subspace_overlaps", "to_pcn",
]
