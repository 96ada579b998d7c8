"""A stand-in for a user's model file, for the tests that run commands on one (the docs' commands,
older codebook files through evaluate-model).  Needs no checkout: a copy of tests/ run against an
installed wheel writes it too."""

import json
import struct
from pathlib import Path

import numpy as np

__all__ = ["user_model"]


def user_model(path: Path) -> Path:
    """A stand-in for the user's model: a safetensors file of two float32 weights whose rows fit
    every block size, vector group and Hadamard span the docs use (written by hand: the format is
    a length, a JSON header and the raw bytes)."""
    rng = np.random.default_rng(0)
    tensors = {"layer.0.weight": rng.standard_normal((64, 256)),
               "layer.1.weight": 0.02 * rng.standard_normal((32, 512))}
    header, data = {}, b""
    for name, value in tensors.items():
        raw = value.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path
