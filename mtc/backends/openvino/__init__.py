"""OpenVINO: CPU, static shapes per resolution, explicit FP32/BF16 inference precision."""

from __future__ import annotations

from dataclasses import dataclass

from mtc.backends.cpu import int8_saturates
from mtc.backends.onnxruntime import UNCHECKED_CPU
from mtc.backends.registry import Availability, BackendEntry, Probe

# Artifact kinds OpenVINO runs less faithfully than the ONNX Runtime their gates were checked
# on (measurements in docs/backends.md).
UNFAITHFUL = {
    "int8-s8": "INT8 artifacts with signed activations less faithfully than the ONNX Runtime they were checked "
               "on; re-quantize with --preset speed (uint8 activations) for OpenVINO",
    "fp16": "FP16 artifacts less faithfully than the ONNX Runtime they were checked on (and slower than their "
            "FP32 artifact: on a CPU, run that on OpenVINO)",
}

# Distinct input sizes compiled static before new ones share one dynamic-shape model. A video
# has one size; a folder of mixed-size photos has one per photo, where a static compile per
# size costs more than it saves. Measured on a recurrent video model (FP32, 2 cores, 512x288 to
# 960x720): a static compile takes 1.2-1.7 s per new size (and its cache entry on disk), the
# dynamic model infers 8-37 % slower per frame but compiles once (0.3-0.6 s for the first frame
# at a new size, against 1.3-2.0 s static).
MAX_STATIC_SHAPES = 4


@dataclass(frozen=True)
class Options:
    """OpenVINO's own settings (its precision is the common `precision`).

    Attributes:
        cache: keep rewritten graphs and compiled models in the mtc cache.
        static_shapes: compile a static model per input signature (measured faster).
        max_static_shapes: input signatures compiled static; further ones (a folder of
            mixed-size photos) share one dynamic-shape model instead of a compile and a cache
            entry each (see MAX_STATIC_SHAPES).
    """

    cache: bool = True
    static_shapes: bool = True
    max_static_shapes: int = MAX_STATIC_SHAPES


def probe(available: Availability) -> Probe:
    if not available.openvino:
        return Probe(False, reason="backend 'openvino' is not installed", fix="pip install 'mtc[openvino]'",
                     precisions=("fp32", "bf16"))
    unfaithful = {**UNFAITHFUL, "int8-unchecked-cpu": UNCHECKED_CPU} if int8_saturates(available.cpu) else UNFAITHFUL
    return Probe(True, rank=2, reason="CPU only; OpenVINO (static shapes) measured faster than ONNX Runtime",
                 unfaithful=unfaithful, precisions=("fp32", "bf16"))


def open_session(model_path, *, io=None, manifest=None, folder=None, common, options: Options, choice):
    from mtc.backends.openvino.session import OpenVinoBackend

    return OpenVinoBackend(model_path, io=io, precision=common.precision, threads=common.threads,
                           cache=options.cache, static_shapes=options.static_shapes,
                           max_static_shapes=options.max_static_shapes,
                           model_sha256=manifest.files[manifest.model_file].sha256 if manifest is not None else None)


def prepare(folder, manifest, profiles, *, common, options: Options, force=False) -> list[str]:
    """Compile the static model for each profile into OpenVINO's cache."""
    from mtc.backends.openvino.build import precompile

    results = precompile(folder, manifest, profiles, precision=common.precision, threads=common.threads)
    return [f"profile {r['profile']} ({r['shape']}): compiled in {r['seconds']} s ({r['precision']}), cached"
            for r in results]


BACKEND = BackendEntry(name="openvino", title="OpenVINO", probe=probe, open=open_session, options=Options,
                       build=prepare)
