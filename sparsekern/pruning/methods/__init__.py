"""Pruning methods, one class each with one interface (``methods.base.Method``).

Adding a method means adding a class here: the trainer and the CLI only look it up in ``METHODS``.
"""
from sparsekern.pruning.methods.base import Method
from sparsekern.pruning.methods.l0 import L0, ChannelL0, DepL0
from sparsekern.pruning.methods.simple import GMP, STR, Dense

METHODS: dict[str, type[Method]] = {m.name: m for m in (Dense, GMP, STR, L0, ChannelL0, DepL0)}

__all__ = ["METHODS", "Method"]
