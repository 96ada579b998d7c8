"""``QuantState``: everything needed to dequantize a packed array, with bitsandbytes' keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["QuantState", "dtype_name", "dtype_from_name"]

_DTYPE_NAMES = ("float32", "float16", "bfloat16")


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"`` (bitsandbytes spells dtypes this way)."""
    name = np.dtype(dtype).name
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name}; expected one of {', '.join(_DTYPE_NAMES)}")
    return name


def dtype_from_name(name: Any) -> np.dtype:
    """numpy dtype from a name such as ``"float16"``, ``"torch.bfloat16"`` or a dtype."""
    if not isinstance(name, str):
        name = getattr(name, "name", None) or str(name)
    name = name.replace("torch.", "")
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - depends on the environment
            raise ValueError("bfloat16 needs the ml_dtypes package: pip install 'quantbook[bf16]'") from None
        return np.dtype(ml_dtypes.bfloat16)
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {', '.join(_DTYPE_NAMES)}")
    return np.dtype(name)


def _array(v: Any, dtype) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(v), dtype=dtype).reshape(-1)


@dataclass(eq=False)
class QuantState:
    """Quantization state of one array (bitsandbytes' field names).

    ``absmax`` holds one float32 scale per block — or, when ``nested``, the uint8 codes of the
    double-quantized scales (as bitsandbytes stores them); :meth:`absmax_f32` always gives the
    float32 scales used for dequantization.  ``code`` is the index→value table (float32, stored
    order, bitsandbytes' ``quant_map``); ``quant_type`` the codebook name; ``bits`` the packed
    width.  Nested fields: ``nested_absmax`` (float32 per 256 blocks), ``nested_quant_map``
    (bitsandbytes' signed dynamic map), ``nested_blocksize`` (256), ``nested_offset`` (the
    float32 mean subtracted before quantizing, as a Python float).
    """

    absmax: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    blocksize: int
    code: np.ndarray
    quant_type: str
    bits: int = 4
    nested_absmax: np.ndarray | None = None
    nested_quant_map: np.ndarray | None = None
    nested_blocksize: int | None = None
    nested_offset: float | None = None

    @property
    def nested(self) -> bool:
        return self.nested_absmax is not None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_blocks(self) -> int:
        return -(-self.size // self.blocksize)

    def absmax_f32(self) -> np.ndarray:
        """Per-block float32 scales (dequantizing the nested statistics if needed)."""
        if not self.nested:
            return self.absmax
        from .reference import dequantize_absmax_nested

        return dequantize_absmax_nested(self.absmax, self.nested_absmax, np.float32(self.nested_offset),
                                        self.nested_quant_map, self.nested_blocksize)

    # --------------------------------------------------------------- (de)serialise
    def as_dict(self) -> dict[str, Any]:
        """Dict with bitsandbytes' keys (numpy arrays, str dtypes, tuple shape).

        Keys: ``quant_type, absmax, blocksize, quant_map, dtype, shape`` and, when nested,
        ``nested_absmax, nested_blocksize, nested_quant_map, nested_dtype, nested_offset``.
        ``bits`` is added only when it is not 4 (bitsandbytes has no such key).
        """
        d: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": int(self.blocksize),
            "quant_map": self.code,
            "dtype": dtype_name(self.dtype),
            "shape": tuple(int(s) for s in self.shape),
        }
        if self.nested:
            d.update(
                nested_absmax=self.nested_absmax,
                nested_blocksize=int(self.nested_blocksize),
                nested_quant_map=self.nested_quant_map,
                nested_dtype="float32",
                nested_offset=float(self.nested_offset),
            )
        if self.bits != 4:
            d["bits"] = int(self.bits)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantState":
        """Inverse of :meth:`as_dict`; also accepts bitsandbytes' unpacked ``as_dict()``
        (torch tensors, ``"torch.float16"``-style dtypes)."""
        if not isinstance(d, Mapping):
            raise ValueError("QuantState.from_dict needs a mapping")
        missing = [k for k in ("absmax", "blocksize", "quant_map", "dtype", "shape") if k not in d]
        if missing:
            raise ValueError(f"quant state lacks {', '.join(missing)}")
        nested = "nested_absmax" in d
        if nested:
            miss = [k for k in ("nested_blocksize", "nested_quant_map", "nested_offset") if k not in d]
            if miss:
                raise ValueError(f"nested quant state lacks {', '.join(miss)}")
        code = _array(d["quant_map"], np.float32)
        bits = int(d.get("bits", 4))
        bs = int(d["blocksize"])
        if bs < 1 or bs & (bs - 1):
            raise ValueError(f"blocksize must be a power of two, got {d['blocksize']!r}")
        if code.size > 2**bits:
            raise ValueError(f"quant_map has {code.size} entries, more than 2**{bits}")
        st = cls(
            absmax=_array(d["absmax"], np.uint8 if nested else np.float32),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=dtype_from_name(d["dtype"]),
            blocksize=bs,
            code=code,
            quant_type=str(d.get("quant_type") or "custom"),
            bits=bits,
        )
        if nested:
            st.nested_absmax = _array(d["nested_absmax"], np.float32)
            st.nested_quant_map = _array(d["nested_quant_map"], np.float32)
            st.nested_blocksize = int(d["nested_blocksize"])
            off = d["nested_offset"]
            st.nested_offset = float(off.item() if hasattr(off, "item") else off)
        if st.absmax.size != st.n_blocks:
            raise ValueError(f"absmax has {st.absmax.size} entries, expected {st.n_blocks} "
                             f"({st.size} values in blocks of {st.blocksize})")
        return st

    def __repr__(self) -> str:
        nest = f", nested (offset={self.nested_offset:.6g})" if self.nested else ""
        return (f"QuantState({self.quant_type}, bits={self.bits}, shape={self.shape}, "
                f"dtype={dtype_name(self.dtype)}, blocksize={self.blocksize}, "
                f"blocks={self.n_blocks}{nest})")
