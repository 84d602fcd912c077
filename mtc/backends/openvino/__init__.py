"""OpenVINO: CPU, static shapes per resolution, explicit FP32/BF16 inference precision."""

from __future__ import annotations

from mtc.backends.onnxruntime import UNCHECKED_CPU
from mtc.backends.registry import Availability, BackendEntry, Probe

# Artifact kinds OpenVINO runs less faithfully than the ONNX Runtime their gates were checked
# on (measurements in docs/backends.md).
UNFAITHFUL = {
    "int8-s8": "INT8 artifacts with signed activations less faithfully than the ONNX Runtime they were checked "
               "on; re-quantize with --preset speed (uint8 activations) for OpenVINO",
    "fp16": "FP16 artifacts less faithfully than the ONNX Runtime they were checked on (and slower than their "
            "FP32 artifact: on a CPU, run that on OpenVINO)",
    "int8-unchecked-cpu": UNCHECKED_CPU,
}


def probe(available: Availability) -> Probe:
    if not available.openvino:
        return Probe(False, reason="backend 'openvino' is not installed", fix="pip install 'mtc[openvino]'",
                     precisions=("fp32", "bf16"))
    return Probe(True, rank=2, reason="CPU only; OpenVINO (static shapes) measured faster than ONNX Runtime",
                 unfaithful=UNFAITHFUL, precisions=("fp32", "bf16"))


def open_session(model_path, *, io=None, manifest=None, folder=None, options, choice):
    from mtc.backends.openvino.session import OpenVinoBackend

    return OpenVinoBackend(model_path, io=io, precision=options.precision, threads=options.threads,
                           cache=options.openvino_cache)


def prepare(folder, manifest, profiles, *, options, force=False) -> list[str]:
    """Compile the static model for each profile into OpenVINO's cache."""
    from mtc.backends.openvino.build import precompile

    results = precompile(folder, manifest, profiles, precision=options.precision, threads=options.threads)
    return [f"profile {r['profile']} ({r['shape']}): compiled in {r['seconds']} s ({r['precision']}), cached"
            for r in results]


BACKEND = BackendEntry(name="openvino", title="OpenVINO", probe=probe, open=open_session, build=prepare)
