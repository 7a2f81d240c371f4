"""Sparse layers: STR (soft threshold), L0 hard-concrete gates, channel gates, GMP masks.

Every weight layer subclasses nn.Linear / nn.Conv2d (drop-in) and ``SparseModule``:
``from_dense(layer, **opts)``, ``effective_weight()``, ``effective_bias()``, ``nonzero_mask()``,
``to_dense()``, ``dense_type``. Gated modules keep their noise (seed, offset) in state_dict.
"""
from sparsekern.nn.base import NoiseStream, SparseModule
from sparsekern.nn.channel_gate import ChannelGate
from sparsekern.nn.head_gate import HeadGate
from sparsekern.nn.generator import GateGenerator, GeneratorOutput
from sparsekern.nn.gates import HardConcreteGates, gate_open_probability, log_alpha_init
from sparsekern.nn.l0_layers import L0Conv2d, L0Linear, _L0Mixin
from sparsekern.nn.masked import MaskedConv2d, MaskedLinear, _MaskedMixin
from sparsekern.nn.str_layers import DEFAULT_S_INIT, STRConv2d, STRLinear, _STRMixin

# The mixins also match the versions of Hugging Face's Conv1D (nn.conv1d, built on first use), so
# the controllers (STR's target, GMP, L0's expected density) and the optimizer groups see GPT-2's layers.
STR_LAYERS = (STRLinear, STRConv2d, _STRMixin)
L0_LAYERS = (L0Linear, L0Conv2d, _L0Mixin)
MASKED_LAYERS = (MaskedLinear, MaskedConv2d, _MaskedMixin)

__all__ = [
    "DEFAULT_S_INIT", "L0_LAYERS", "MASKED_LAYERS", "STR_LAYERS",
    "ChannelGate", "GateGenerator", "GeneratorOutput",
    "HardConcreteGates", "HeadGate", "L0Conv2d", "L0Linear", "MaskedConv2d", "MaskedLinear", "NoiseStream",
    "STRConv2d", "STRLinear", "SparseModule", "gate_open_probability", "log_alpha_init",
]
