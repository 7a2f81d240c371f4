// Schemas of the compiled ops (namespace sparsekern_C), from the one list in op_signatures.h.
// They mirror the functions of sparsekern/backends/reference.py. Kernels: csrc/cpu (CPU) and
// csrc/cuda (CUDA). Fake (Meta) kernels: sparsekern/backends/compiled.py.
#include <torch/library.h>

#include "op_signatures.h"

TORCH_LIBRARY(sparsekern_C, m) {
  m.set_python_module("sparsekern.backends.compiled");  // where the fake kernels live
#define SK_DEFINE_SCHEMA(name, schema, ret, params) m.def(schema);
  SPARSEKERN_C_OPS(SK_DEFINE_SCHEMA)
#undef SK_DEFINE_SCHEMA
}
