"""Emulations of other libraries' floating-point arithmetic, bit for bit.

* :mod:`.torch_f32` — torch's float32 CPU ``linspace``, ``sum`` and ``mean``.
"""
