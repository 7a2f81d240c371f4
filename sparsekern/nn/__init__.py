"""Sparse layers: STR (soft threshold), L0 hard-concrete gates, channel gates, GMP masks.

Every weight layer subclasses nn.Linear / nn.Conv1d / nn.Conv2d (drop-in) and ``SparseModule``:
``from_dense(layer, **opts)``, ``effective_weight()``, ``effective_bias()``, ``nonzero_mask()``,
``to_dense()``, ``dense_type``. Gated modules keep their noise (seed, offset) in state_dict.
"""
from sparsekern.nn.base import NoiseStream, SparseModule
from sparsekern.nn.channel_gate import ChannelGate
from sparsekern.nn.head_gate import HeadGate
from sparsekern.nn.generator import GateGenerator, GeneratorOutput
from sparsekern.nn.gates import HardConcreteGates, gate_open_probability, log_alpha_init
from sparsekern.nn.l0_layers import _L0Mixin, L0Conv1d, L0Conv2d, L0Linear
from sparsekern.nn.masked import _MaskedMixin, MaskedConv1d, MaskedConv2d, MaskedLinear
from sparsekern.nn.str_layers import _STRMixin, DEFAULT_S_INIT, STRConv1d, STRConv2d, STRLinear

# For isinstance checks: the shared bases, so Hugging Face's sparse Conv1D (nn.conv1d, built only
# once transformers is imported) is an STR / L0 / masked layer to the controllers too.
STR_LAYERS = (_STRMixin,)
L0_LAYERS = (_L0Mixin,)
MASKED_LAYERS = (_MaskedMixin,)

__all__ = [
    "DEFAULT_S_INIT", "L0_LAYERS", "MASKED_LAYERS", "STR_LAYERS",
    "ChannelGate", "GateGenerator", "GeneratorOutput",
    "HardConcreteGates", "HeadGate", "L0Conv1d", "L0Conv2d", "L0Linear", "MaskedConv1d", "MaskedConv2d",
    "MaskedLinear", "NoiseStream", "STRConv1d", "STRConv2d", "STRLinear", "SparseModule", "gate_open_probability",
    "log_alpha_init",
]
