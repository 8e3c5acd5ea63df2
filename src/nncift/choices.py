"""Allowed values of choice-valued settings, in one light module (no torch) that settings and the code
implementing them both import."""

COMPRESSORS = ("identity", "projection", "dropout", "dropout-structured")
"""Gradient compressors (``nncift.gradients.compressors``)."""

ADAM_FORMS = ("exact", "reference")
"""Forms of LESS's Adam direction (``nncift.gradients.adam``)."""

SELECTIT_FORMS = ("paper", "reference")
"""SelectIT token-level forms (``nncift.influence.selectit``)."""

DTYPES = ("float32", "bfloat16", "float16")
"""Model weight dtypes."""
