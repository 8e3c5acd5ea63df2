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

NETWORK_LOSSES = ("mse", "row-centred")
"""Training losses of the two-tower network (``nncift.fitting``): plain MSE, or MSE after removing each row's mean error."""

SAMPLING_DESIGNS = ("auto", "block", "all-targets")
"""Which pairs get the exact influence function (``nncift.layout``): the function's own choice, a u × u block (or g
blocks), or every target × the sampled candidates."""
