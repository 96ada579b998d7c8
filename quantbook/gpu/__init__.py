"""CuPy raw-kernel GPU path (optional extra ``[gpu]``).  Importing quantbook never needs CuPy.

* :mod:`.backend` — ``quantize_gpu`` / ``dequantize_gpu`` / ``quantize_absmax_nested`` /
  ``dequantize_absmax_nested`` (what ``quantbook.quantize(..., backend="gpu")`` calls);
* :mod:`.kernels` — the CUDA C source (header-free) and the kernel names;
* :mod:`.tables` — host-side encoder tables (numpy);
* :mod:`.compile` — NVRTC through ``cupy_backends`` (works without a GPU);
* :mod:`.emulate` — the same kernel source run on the CPU (C++ shim), for tests without a GPU.
"""
