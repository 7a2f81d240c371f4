"""Hard-concrete gate parameters (docs/math.md section 2), shared by the L0 layers and ChannelGate."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from sparsekern import ops
from sparsekern.nn.base import NoiseStream
from sparsekern.nn.slow_path import keep_slow_path
from sparsekern.ops.checks import check_hc

BETA, GAMMA, ZETA = ops.BETA, ops.GAMMA, ops.ZETA
# The L0 reference code (AMLab-Amsterdam/L0_regularization) keeps log_alpha in [log 0.01, log 100]
# and clamps P(z != 0) to [1e-6, 1 - 1e-6] in its penalty.
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
P_CLAMP = 1e-6


def log_alpha_init(drop_rate: float) -> float:
    """Mean initial log_alpha for a drop rate p: ``log(1 - p) - log(p)`` (docs/math.md §2)."""
    if not isinstance(drop_rate, (int, float)) or not 0.0 < drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in (0, 1), got {drop_rate!r}")
    return math.log(1.0 - drop_rate) - math.log(drop_rate)


def gate_open_probability(log_alpha: Tensor, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA) -> Tensor:
    """Per-gate P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)), differentiable."""
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


class HardConcreteGates(NoiseStream):
    """Mixin: a tensor of hard-concrete gates.

    ``log_alpha`` is the module's own Parameter, initialised ``N(log((1-p)/p), 0.01)``, unless
    ``log_alpha_source`` is given: a callable (e.g. a gate-generator module, as in Dep-L0)
    returning the log_alpha tensor of the gate shape on every call; then the module owns no
    gate parameter and the source is *not* registered as a submodule (its parameters
    belong to whoever owns it).
    """

    def _init_gates(self, shape: tuple[int, ...], drop_rate: float, beta: float, gamma: float, zeta: float,
                    log_alpha_source: Callable[[], Tensor] | None, factory: dict) -> None:
        check_hc(type(self).__name__, beta, gamma, zeta)
        self.beta, self.gamma, self.zeta = float(beta), float(gamma), float(zeta)
        self.gate_shape = tuple(shape)
        mean = log_alpha_init(drop_rate)
        self.drop_rate = float(drop_rate)
        if log_alpha_source is None:
            self.log_alpha = nn.Parameter(torch.empty(self.gate_shape, **factory).normal_(mean, 0.01))
        else:
            if not callable(log_alpha_source):
                raise TypeError(f"{type(self).__name__}: log_alpha_source must be callable, "
                                f"got {type(log_alpha_source).__name__}")
            self.register_parameter("log_alpha", None)
        self.__dict__["log_alpha_source"] = log_alpha_source  # plain attribute: never a submodule
        self._init_noise(factory.get("device"))
        keep_slow_path(self)

    def set_log_alpha_source(self, source: Callable[[], Tensor] | None) -> None:
        """Take log_alpha from ``source()`` from now on (None: back to an own Parameter, freshly initialised)."""
        if source is None and self.log_alpha is None:
            ref = self.weight if hasattr(self, "weight") else None
            factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
            self.log_alpha = nn.Parameter(
                torch.empty(self.gate_shape, **factory).normal_(log_alpha_init(self.drop_rate), 0.01))
        elif source is not None:
            if not callable(source):
                raise TypeError(f"log_alpha_source must be callable, got {type(source).__name__}")
            self.log_alpha = None
        self.__dict__["log_alpha_source"] = source

    def gate_log_alpha(self) -> Tensor:
        """The log_alpha in use, of shape ``gate_shape``."""
        if self.log_alpha_source is None:
            return self.log_alpha
        la = self.log_alpha_source()
        if not isinstance(la, Tensor) or la.numel() != math.prod(self.gate_shape):
            got = tuple(la.shape) if isinstance(la, Tensor) else type(la).__name__
            raise ValueError(f"{type(self).__name__}: log_alpha_source returned {got}, "
                             f"expected shape {self.gate_shape}")
        return la.reshape(self.gate_shape)

    def hc_kwargs(self) -> dict:
        return {"beta": self.beta, "gamma": self.gamma, "zeta": self.zeta}

    def eval_gates(self) -> Tensor:
        """Deterministic gates (eval mode), shape ``gate_shape``."""
        return ops.hard_concrete_eval(self.gate_log_alpha(), gamma=self.gamma, zeta=self.zeta)

    def kept(self) -> Tensor:
        """Bool mask of the gates that are non-zero in eval mode."""
        with torch.no_grad():
            return self.eval_gates() > 0

    def open_probability(self) -> Tensor:
        """P(z != 0) per gate, differentiable w.r.t. log_alpha."""
        return gate_open_probability(self.gate_log_alpha(), self.beta, self.gamma, self.zeta)

    def clamped_open_probability(self) -> Tensor:
        """P(z != 0) clamped to [1e-6, 1 - 1e-6], as the L0 reference code computes it for its penalty."""
        return self.open_probability().clamp(P_CLAMP, 1.0 - P_CLAMP)

    @torch.no_grad()
    def clamp_log_alpha_(self, low: float = LOG_ALPHA_RANGE[0], high: float = LOG_ALPHA_RANGE[1]) -> None:
        """Clamp the own log_alpha in place (the L0 reference code does it after every optimizer step)."""
        if self.log_alpha is not None:
            self.log_alpha.clamp_(low, high)

    def expected_l0(self) -> Tensor:
        """Expected number of open gates (the ``l0_norm`` kernel)."""
        return ops.l0_norm(self.gate_log_alpha(), **self.hc_kwargs())
