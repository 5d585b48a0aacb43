// Placeholder: the bindings of this op family are filled in with its kernels.
#include <pybind11/pybind11.h>

namespace resunet {
void bind_image_ops(pybind11::module_& m) { (void)m; }
}  // namespace resunet
