"""Beyond one machine: Triton Inference Server model repositories and batch matting on Ray.

Sits above the runtime (it wraps `mtc.runtime` sessions); nothing below imports it. The
engines it talks to are optional extras, imported lazily: `mtc[triton]` for Triton's client
and model-config protobuf, `mtc[ray]` for Ray.
"""
