// `import sparsekern._C` loads this shared library, whose static initializers register the
// sparsekern_C ops. The module itself binds one function: the eager CPU uniform stream, which
// has no autograd and no tensor input, so a plain binding (~0.3 us) replaces a dispatcher call
// from Python (~2.4 us) and the Python-side allocation that its out= schema needs.
#include <torch/extension.h>

#include "cpu/uniform.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("uniform_cpu", &sparsekern::cpu::uniform_new, "uniform_cpu(numel, seed, offset) -> float32 CPU tensor",
        pybind11::arg("numel"), pybind11::arg("seed"), pybind11::arg("offset"));
}
