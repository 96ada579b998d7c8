"""bitsandbytes' nested statistics (``compress_statistics``): the float32 block absmax values,
less their mean, coded in blocks of 256 with the signed dynamic 8-bit map.

The computation is :mod:`quantbook.bulk.nested` (docs/format.md, "Nested statistics"); this
rule states what it stores and costs.  It is not a function of one block's maximum: the
offset and the 256-block maxima depend on the other blocks, so it is not deterministic in
the sense of :attr:`ScaleRule.deterministic`.
"""

from __future__ import annotations

from .rule import ScaleRule

__all__ = ["NestedScale"]

#: blocks per nested block (bitsandbytes' fixed 256)
NESTED_BLOCKS = 256


class NestedScale(ScaleRule, family="nested"):
    deterministic = False
    layout = "bnb"
    stored_dtype, stored_bytes, tensor_bytes = "uint8", 1, 4  # + the offset

    def bits_per_weight(self, block_size, code_bits=4, n=None):
        # a uint8 code per block and a float32 maximum per 256 blocks (+ the float32 offset)
        bpw = code_bits + 8.0 / block_size + 32.0 / (NESTED_BLOCKS * block_size)
        if n:
            bpw += 32.0 / n
        return bpw

    def describe(self):
        return (f"{self.name}: uint8 code per block + float32 per {NESTED_BLOCKS} blocks "
                "+ float32 offset (bitsandbytes compress_statistics)")
