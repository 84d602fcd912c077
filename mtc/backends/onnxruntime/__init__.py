"""ONNX Runtime: always installed; CPU, or CUDA / TensorRT execution providers on a GPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mtc.backends.cpu import int8_saturates
from mtc.backends.registry import Availability, BackendEntry, Probe

log = logging.getLogger("mtc")

UNCHECKED_CPU = ("INT8 artifacts checked on another CPU class less faithfully on this AVX2-only CPU (integer "
                 "pair sums saturate without VNNI; re-quantize on this machine)")


@dataclass(frozen=True)
class Options:
    """ONNX Runtime's own settings.

    Attributes:
        allow_spinning: worker threads spin while idle (faster alone, slower beside other
            sessions, e.g. video codecs).
        providers: "cpu", "cuda", "tensorrt", best first; None: what the probe chose.
        io_binding: keep recurrent state in device memory (None: on for GPU providers only).
        use_optimized_model: load the model `mtc build --backend onnxruntime` saved in the
            cache, when present.
    """

    allow_spinning: bool = True
    providers: tuple[str, ...] | None = None
    io_binding: bool | None = None
    use_optimized_model: bool = True


def probe(available: Availability) -> Probe:
    unfaithful = {"int8-unchecked-cpu": UNCHECKED_CPU} if int8_saturates(available.cpu) else {}
    if available.gpu_count > 0 and "CUDAExecutionProvider" in available.ort_providers:
        why = "an NVIDIA GPU and onnxruntime's CUDA provider are available"
        if not available.tensorrt:
            why += " (TensorRT is not installed: pip install 'mtc[trt]')"
        return Probe(True, rank=1, reason=why, providers=("cuda",))
    extra = "" if available.openvino else " (OpenVINO, faster on CPU, is not installed: pip install 'mtc[openvino]')"
    return Probe(True, rank=3, reason=f"CPU only{extra}", providers=("cpu",), unfaithful=unfaithful)


def open_session(model_path, *, io=None, manifest=None, folder=None, common, options: Options, choice):
    from mtc.backends.onnxruntime.build import cached_optimized_model
    from mtc.backends.onnxruntime.session import OrtBackend
    from mtc.errors import MtcError

    providers = options.providers if options.providers is not None else choice.providers
    optimized = None
    if options.use_optimized_model and manifest is not None:
        try:
            optimized = cached_optimized_model(model_path, manifest.files[manifest.model_file].sha256,
                                               providers=providers)
        except MtcError as exc:  # no usable cache folder: run from the artifact's model
            log.debug("onnxruntime: no optimized-model cache (%s)", exc.message)
    state_pairs = tuple((p.input, p.output) for p in io.states) if io is not None else ()
    return OrtBackend(model_path, threads=common.threads, allow_spinning=options.allow_spinning,
                      providers=providers, optimized_model=optimized, state_pairs=state_pairs,
                      io_binding=options.io_binding)


def prepare(folder, manifest, profiles, *, common, options: Options, force=False) -> list[str]:
    """Save ORT's optimized model into the cache (profiles do not apply: ORT takes any shape)."""
    from mtc.backends.onnxruntime.build import save_optimized_model

    path = save_optimized_model(folder / manifest.model_file, manifest.files[manifest.model_file].sha256)
    return [f"optimized model saved to {path}"]


BACKEND = BackendEntry(name="onnxruntime", title="ONNX Runtime", probe=probe, open=open_session, options=Options,
                       build=prepare)
