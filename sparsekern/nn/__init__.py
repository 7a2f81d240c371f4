"""Sparse layers: STR (soft threshold), L0 hard-concrete gates, channel gates, GMP masks.

Every weight layer subclasses nn.Linear / nn.Conv2d (drop-in) and ``SparseModule``:
``from_dense(layer, **opts)``, ``effective_weight()``, ``effective_bias()``, ``nonzero_mask()``,
``to_dense()``, ``dense_type``. Gated modules keep their noise (seed, offset) in state_dict.
"""
from sparsekern.nn.base import NoiseStream, SparseModule
from sparsekern.nn.channel_gate import ChannelGate
from sparsekern.nn.generator import GateGenerator, GeneratorOutput
from sparsekern.nn.gates import HardConcreteGates, gate_open_probability, log_alpha_init
from sparsekern.nn.l0_layers import L0Conv2d, L0Linear, _L0Mixin
from sparsekern.nn.masked import MaskedConv2d, MaskedLinear, _MaskedMixin
from sparsekern.nn.str_layers import DEFAULT_S_INIT, STRConv2d, STRLinear, _STRMixin

# The mixins also match Hugging Face's sparse Conv1D layers (nn.conv1d, built only with transformers):
# the STR target and GMP controllers must see GPT-2's layers too (they missed them: "no STR layers").
STR_LAYERS = (STRLinear, STRConv2d, _STRMixin)
MASKED_LAYERS = (MaskedLinear, MaskedConv2d, _MaskedMixin)
L0_LAYERS = (L0Linear, L0Conv2d)  # [out, in] weights only: the report and finalize read their shapes
L0_WEIGHT_LAYERS = (_L0Mixin,)  # every L0 layer, Conv1D included (layout-free uses: expected density)

__all__ = [
    "DEFAULT_S_INIT", "L0_LAYERS", "L0_WEIGHT_LAYERS", "MASKED_LAYERS", "STR_LAYERS",
    "ChannelGate", "GateGenerator", "GeneratorOutput",
    "HardConcreteGates", "L0Conv2d", "L0Linear", "MaskedConv2d", "MaskedLinear", "NoiseStream",
    "STRConv2d", "STRLinear", "SparseModule", "gate_open_probability", "log_alpha_init",
]
