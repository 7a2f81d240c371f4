// `import sparsekern._C` loads this shared library, whose static initializers register
// the sparsekern_C ops; the Python module itself is empty (no pybind11 needed).
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
