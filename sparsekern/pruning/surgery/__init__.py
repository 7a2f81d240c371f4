"""Changing a model and counting what it costs: ``sparsify`` (swap in sparse layers),
``channel_gating`` (where structured gates go), ``modules`` (finding sparse layers and gates),
``flops`` and ``report`` (FLOPs and sparsity per layer), ``finalize`` and ``shrink`` (fold gates
into plain layers and remove closed channels)."""
