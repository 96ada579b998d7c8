"""CuPy raw-kernel GPU backend (``backend="gpu"``, extra ``[gpu]``).  Importing it never
needs CuPy or a GPU.

* :mod:`.backend` — :class:`CudaBackend` and the device functions it calls
  (``quantize_gpu`` / ``dequantize_gpu`` / the nested-absmax kernels);
* :mod:`.kernels` — the CUDA C source (header-free) and the kernel names;
* :mod:`.tables` — host-side encoder tables (numpy);
* :mod:`.compile` — NVRTC through ``cupy_backends`` (works without a GPU);
* :mod:`.scaled` / :mod:`.scaled_kernels` — the scaled layouts' launchers and kernels;
* :mod:`.vq` / :mod:`.vq_kernels` — vector quantization's (the ``gpu`` backend of
  :mod:`quantbook.bulk.vq`).

The same kernel source also runs on the CPU through a C++ shim in the tests
(tests/gpu_emulator.py).
"""

from .backend import CudaBackend

__all__ = ["CudaBackend"]
