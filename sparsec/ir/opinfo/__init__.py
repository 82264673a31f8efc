"""Op knowledge in one place: one `OpInfo` per ATen op, in modules by op family.

Modules: `_flow` (ChannelFlow: slots, links, freezing), `_registry` (the OpInfo table and its
decorators), and the families: `elementwise`, `layers` (conv, linear, embedding), `norms`,
`pooling`, `layout`, `matmul`, `attention`, `indexing`, `no_channels`.
How to add an op: ARCHITECTURE.md, "Add an op".
"""

from sparsec.ir.opinfo import (  # noqa: F401 - each family registers its ops on import
    attention,
    elementwise,
    indexing,
    layers,
    layout,
    matmul,
    no_channels,
    norms,
    pooling,
)
from sparsec.ir.opinfo._flow import ChannelFlow, IndexValues, ParamRole, Resize, Resized, Slot
from sparsec.ir.opinfo._registry import (
    LayerKind,
    OpInfo,
    all_op_infos,
    has_rule,
    index_values,
    layer,
    macs,
    op_info,
    resizer,
    rule,
)
from sparsec.ir.opinfo.layout import factor_reshape

__all__ = [
    "ChannelFlow",
    "IndexValues",
    "LayerKind",
    "OpInfo",
    "ParamRole",
    "Resize",
    "Resized",
    "Slot",
    "all_op_infos",
    "factor_reshape",
    "has_rule",
    "index_values",
    "layer",
    "macs",
    "op_info",
    "resizer",
    "rule",
]
