"""Inference layers whose weight is a ``torch.sparse`` CSR matrix (what ``--format sparse`` exports).

The CSR parts (``crow_indices``, ``col_indices``, ``values``) are plain buffers, so a state_dict of
these layers is a dict of ordinary tensors that ``torch.load(weights_only=True)`` reads; ``refresh()``
rebuilds the CSR tensor from them with ``check_invariants=True``, so indices from an untrusted file
are checked before any kernel follows them (torch 2.13 loads a pickled CSR tensor with out-of-range
indices without complaint). Forward only (no autograd through the sparse weight).
A Conv2d becomes a CSR matrix [out, in * kh * kw] applied to the unfolded input (im2col).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": once per process is noise here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=True)


class _CSRWeight(nn.Module):
    """The CSR parts as buffers, the matrix shape, and the CSR tensor built from them."""

    def _init_parts(self, dense_2d: Tensor, bias: Tensor | None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            csr = dense_2d.detach().to_sparse_csr()
        self.shape2d = tuple(dense_2d.shape)
        self.register_buffer("crow_indices", csr.crow_indices().clone())
        self.register_buffer("col_indices", csr.col_indices().clone())
        self.register_buffer("values", csr.values().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the CSR matrix from the buffers (after ``load_state_dict``); ValueError if they are not a
        valid CSR matrix of ``shape2d``."""
        n_rows = self.shape2d[0]
        parts = (self.crow_indices, self.col_indices, self.values)
        if any(t.dim() != 1 for t in parts) or self.crow_indices.numel() != n_rows + 1 \
                or self.col_indices.numel() != self.values.numel() \
                or self.crow_indices.dtype != self.col_indices.dtype \
                or self.crow_indices.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{type(self).__name__}: CSR parts do not describe a {self.shape2d} matrix")
        try:
            self.weight_csr = _csr(*parts, self.shape2d)
        except RuntimeError as e:
            raise ValueError(f"{type(self).__name__}: invalid CSR indices ({str(e).splitlines()[0]})") from e

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # The file's nnz differs from the layer's built here: take its sizes and dtypes, then check them.
        for name in ("crow_indices", "col_indices", "values"):
            t = state_dict.get(prefix + name)
            if isinstance(t, Tensor) and t.layout == torch.strided:
                setattr(self, name, torch.empty_like(t))
        before = len(errors)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if len(errors) == before and not any(k.startswith(prefix) for k in missing):
            try:
                self.refresh()
            except ValueError as e:
                errors.append(str(e))

    def dense_weight_2d(self) -> Tensor:
        return self.weight_csr.to_dense()

    @property
    def nnz(self) -> int:
        return self.values.numel()


class CSRLinear(_CSRWeight):
    """``nn.Linear`` with a CSR weight: y = (W @ x^T)^T + b, one sparse-dense matmul per call."""

    def __init__(self, in_features: int, out_features: int, weight: Tensor | None = None,
                 bias: Tensor | None = None, has_bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if weight is None:
            weight = torch.zeros(out_features, in_features)
            bias = torch.zeros(out_features) if has_bias else None
        self._init_parts(weight, bias)

    @classmethod
    def from_dense(cls, layer: nn.Linear) -> "CSRLinear":
        return cls(layer.in_features, layer.out_features, layer.weight, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight_csr, flat.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


class CSRConv2d(_CSRWeight):
    """``nn.Conv2d`` (groups=1, zero padding) as a CSR matrix times the unfolded input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 weight: Tensor | None = None, bias: Tensor | None = None, has_bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = nn.modules.utils._pair(kernel_size), nn.modules.utils._pair(stride)
        self.padding, self.dilation = nn.modules.utils._pair(padding), nn.modules.utils._pair(dilation)
        if weight is None:
            weight = torch.zeros(out_channels, in_channels, *self.kernel_size)
            bias = torch.zeros(out_channels) if has_bias else None
        self._init_parts(weight.reshape(out_channels, -1), bias)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d) -> "CSRConv2d":
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("CSRConv2d: only groups=1 convs with numeric zero padding")
        return cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                   layer.dilation, layer.weight, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [N, C*kh*kw, L]
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # [C*kh*kw, N*L]
        y = torch.sparse.mm(self.weight_csr, cols).reshape(self.out_channels, n, ho * wo).transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(n, self.out_channels, ho, wo)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, nnz={self.nnz}")


CSR_LAYERS = (CSRLinear, CSRConv2d)
