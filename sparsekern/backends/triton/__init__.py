"""Triton kernels for sparsekern (the ``triton`` backend).

``backend`` implements every function of ``sparsekern.backends.reference``; ``ops``
registers the kernels as ``torch.ops.sparsekern_triton.*`` (``triton_op``) so
``torch.compile`` can trace through them. Importing this package imports
``triton``: set ``TRITON_INTERPRET=1`` before that to run on CPU tensors.
"""
