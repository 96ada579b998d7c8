"""Block scale rules: how a block's scale is computed, stored and paid for (:mod:`.rule`).

Families: ``float32`` (bitsandbytes' absmax), ``float16``, ``bfloat16`` (:mod:`.floats`),
``e4m3`` (NVFP4, two-level; :mod:`.e4m3`), ``fouroversix:6|4`` (Four Over Six's NVFP4
scales; :mod:`.fouroversix`), ``e8m0:floor|ceil|even|rceil`` (MX;
:mod:`.e8m0`), ``nested`` (bitsandbytes' compress_statistics; :mod:`.nested`) and
``search:...`` (:mod:`.search`, with ggml's IQ4_NL search in :mod:`.ggml`).  The byte layouts that store them are in
:mod:`quantbook.bulk` and docs/scales.md.
"""

from . import floats, e4m3, e8m0, fouroversix, nested, search  # noqa: F401,I001  (each registers its family)
from .rule import (DEFAULT_QMAX, FAMILIES, SCALED_BITS, ScaleRule, check_qmax, check_scaled_bits, check_scaled_only,
                   get_rule, layout_qmax, rule_names, rule_spellings, scaled_peak, scaled_products,
                   scaled_values)

__all__ = ["ScaleRule", "FAMILIES", "get_rule", "rule_names", "rule_spellings", "check_qmax", "check_scaled_only",
           "layout_qmax",
           "DEFAULT_QMAX", "SCALED_BITS", "check_scaled_bits", "scaled_peak", "scaled_products", "scaled_values"]
