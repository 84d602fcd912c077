"""Calibration and demo data for mtc, generated on demand (nothing generated is kept in git).

The built-in clip lives in `mtc.data.builtin_clip`. It is deliberately not re-exported here:
the module and its `builtin_clip` function share a name, and re-exporting the function would
shadow the submodule attribute (breaking ``import mtc.data.builtin_clip as m`` and mocks).
"""
