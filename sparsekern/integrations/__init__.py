"""Training integrations: sparsekern's methods inside other frameworks' training loops.

``session.SparsitySession`` runs one method from any loop (the ``Method`` interface our trainer
calls); ``hf.SparsityCallback`` (Hugging Face ``Trainer``, ``pip install sparsekern[hf]``) and
``lightning.SparsityCallback`` (``pip install sparsekern[lightning]``) adapt it to those loops.
They are imported on demand: this package needs neither transformers nor lightning.
"""
from sparsekern.integrations.session import SparsitySession

__all__ = ["SparsitySession"]
