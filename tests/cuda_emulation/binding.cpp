// The `sparsekern_emu` op library: every sparsekern_C schema (op_signatures.h), whose CPU
// kernels are csrc/cuda/ops_cuda.cu run under the emulation (emu_prepare.py registers them),
// and two hooks for the tests: which fake device launches go to, and the runtime counters.
#include <torch/library.h>

#include "emulation.h"
#include "op_signatures.h"

namespace {

void emu_set_device(int64_t device) {
  TORCH_CHECK(cudaSetDevice(static_cast<int>(device)) == cudaSuccess, "emu_set_device: no device ", device);
}

// [launches, attribute queries, occupancy queries, grid of the last launch]
std::vector<int64_t> emu_stats() {
  const emu::Stats& s = emu::stats;
  return {s.launches.load(), s.attribute_queries.load(), s.occupancy_queries.load(), s.last_grid.load()};
}

}  // namespace

TORCH_LIBRARY(sparsekern_emu, m) {
#define SK_EMU_SCHEMA(name, schema, ret, params) m.def(schema);
  SPARSEKERN_C_OPS(SK_EMU_SCHEMA)
#undef SK_EMU_SCHEMA
  m.def("emu_set_device(int device) -> ()", &emu_set_device);
  m.def("emu_stats() -> int[]", &emu_stats);
}
