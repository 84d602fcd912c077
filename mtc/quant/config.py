"""Quantization settings: frozen dataclasses with named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mtc.errors import MtcError


@dataclass(frozen=True)
class Gates:
    """Limits the compiled model must meet against FP32 on every check clip (None: no limit)."""

    max_mad: float | None = 2.0  # mean |alpha diff| x 1e3
    max_dtssd: float | None = 2.0  # temporal flicker x 1e2

    def failures(self, mad: float, dtssd: float) -> list[str]:
        problems = []
        if self.max_mad is not None and not mad <= self.max_mad:
            problems.append(f"MAD {mad:.3f} > {self.max_mad}")
        if self.max_dtssd is not None and not dtssd <= self.max_dtssd:
            problems.append(f"dtSSD {dtssd:.3f} > {self.max_dtssd}")
        return problems


@dataclass(frozen=True)
class Fallback:
    """What may return to higher precision when a model misses its gates: INT8 moves its most
    sensitive layers back to float, FP16 keeps the shortest prefix of ops in FP32 that passes.

    Attributes:
        enabled: search for a fallback at all (off: a model that misses its gates fails).
        max_fraction: give up (fail) rather than keep more than this share of the layers (INT8)
            or ops (FP16) in higher precision.
    """

    enabled: bool = True
    max_fraction: float = 0.5


WEIGHT_ROUNDING = ("nearest", "gptq")
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the op types mtc.quant.qdq.RULES covers


@dataclass(frozen=True)
class Ptq4vmConfig:
    """Learned INT8 (PTQ4VM): how hard the Q/DQ plan's rounding, step sizes and per-layer
    affines are trained against the FP32 model (mtc.quant.ptq4vm). Range calibration still
    runs first: its ranges are where the step sizes start.

    Attributes:
        iterations: optimizer steps per block in stage 1 (block reconstruction).
        batch: calibration samples per step, in both stages.
        samples: calibration samples learned from, smallest frames first (among more of one
            size than fit, runs of consecutive frames spread over them all: mtc.quant.ptq4vm.
            choose_samples): a sample holds its block-boundary tensors, which for two dozen HD
            frames run to gigabytes.
        drop: QDrop's probability of keeping an activation float while a block learns (0..1).
        threads: torch threads while learning (None: torch's own default).
        max_block_layers: a block is cut after this many quantized layers even inside a unit.
        gac_iterations: steps of stage 2 (global affine calibration); 0 skips it. Its result
            is kept only where it lowers the end-to-end error on the calibration samples.
        gac_learning_rate: Adam's rate for the per-layer gamma and beta of stage 2.
        temporal_weight: for recurrent (video) models, weight of the flow-assisted temporal loss
            in stage 2 (mtc.quant.flow; needs OpenCV, skipped without it); 0 turns it off.
    """

    iterations: int = 100
    batch: int = 1
    samples: int = 24
    drop: float = 0.5
    threads: int | None = None
    max_block_layers: int = 4
    gac_iterations: int = 30
    gac_learning_rate: float = 1e-3
    temporal_weight: float = 1.0

    def __post_init__(self):
        for name in ("iterations", "batch", "samples", "max_block_layers"):
            if getattr(self, name) < 1:
                raise MtcError(f"PTQ4VM {name.replace('_', ' ')} {getattr(self, name)} must be at least 1",
                               hint="check the --ptq4vm-* options")
        if self.gac_iterations < 0:
            raise MtcError(f"PTQ4VM GAC iterations {self.gac_iterations} must be 0 (off) or more",
                           hint="check the --ptq4vm-* options")
        if not 0.0 <= self.drop <= 1.0:
            raise MtcError(f"QDrop probability {self.drop:g} is not in [0, 1]", hint="pass --ptq4vm-qdrop 0.5, say")
        if self.threads is not None and self.threads < 1:
            raise MtcError(f"PTQ4VM threads {self.threads} must be at least 1", hint="pass --ptq4vm-threads 2, say")
        if not self.temporal_weight >= 0:
            raise MtcError(f"temporal loss weight {self.temporal_weight:g} must be 0 (off) or more",
                           hint="check the PTQ4VM options")
        if not self.gac_learning_rate > 0:
            raise MtcError(f"GAC learning rate {self.gac_learning_rate:g} must be positive",
                           hint="check the PTQ4VM options")


# How long PTQ4VM learns. `fast` is the default: it fits the time target on a 2-core CPU for a
# recurrent video model (figures: docs/quantization.md, "PTQ4VM"); `thorough` takes about six
# times as long in stage 1 (three times the steps, two samples each). Both learn from 24
# samples, the smallest frames first (see `samples`).
PTQ4VM_PRESETS: dict[str, Ptq4vmConfig] = {
    "fast": Ptq4vmConfig(),
    "thorough": Ptq4vmConfig(iterations=300, batch=2, gac_iterations=150),
}


def ptq4vm_preset(name: str, **overrides) -> Ptq4vmConfig:
    if name not in PTQ4VM_PRESETS:
        raise MtcError(f"unknown PTQ4VM preset {name!r}", hint=f"choose one of: {', '.join(PTQ4VM_PRESETS)}")
    return dataclasses.replace(PTQ4VM_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


CHECK_BACKENDS = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Int8Config:
    """How an FP32 graph becomes a Q/DQ INT8 graph.

    Attributes:
        method: activation range calibration: minmax, percentile, entropy or mse.
        percentile: for method="percentile", the |x| percentile kept unclipped.
        op_types: op types that get Q/DQ (see mtc.quant.qdq.RULES); None: the ones the
            artifact's quantization recipe names (family knowledge: Conv for conv nets, Conv,
            MatMul and Gemm for transformers).
        activation_matmuls: also quantize MatMuls of two activations (attention scores and
            their weighted sum); None: as the artifact's recipe says.
        quantize_outputs: also quantize each op's output (after a fused Relu) so CPU
            backends run integer kernels end to end instead of float convs on
            dequantized inputs; TensorRT fuses either form.
        exclude_nodes: nodes kept in float from the start.
        activation_type: "int8" (TensorRT: symmetric, zero point 0) or "uint8" (the type
            ONNX Runtime's fast x86 kernels take): each tensor's own [lo, hi] range with a zero
            point (ranges.asymmetric_range, qdq.activation_quant).
        min_mac_share: quantize only layers holding at least this share of the model's
            multiply-accumulates (0 = all). On CPU, a small layer costs more in Q/DQ
            conversions than INT8 saves, and every quantized layer adds error.
        align_channels: pad quantized convs' inputs with zero channels to a multiple of 4,
            the shape ONNX Runtime's fast x86 integer kernels need (exact; mtc.quant.align).
        weight_rounding: "nearest", or "gptq": Hessian-aware rounding of conv weights on the
            calibration data's statistics (same scales and graph; mtc.quant.gptq). Opt-in: it
            fits the calibration footage; on real footage it helped the recurrent video model at HD and hurt at
            512x288 (measured, see mtc.quant.gptq).
        equalize_concats: rescale the inputs of a quantized conv's channel Concat so each
            group gets a fair share of the one activation range, folding the inverse into the
            conv's weights (same float function; mtc.quant.equalize).
        split_outlier_channels: a quantized conv whose input has a few channels far wider than
            the rest reads them through a float conv of its own, so the rest get an INT8 range
            that fits them (same float function; mtc.quant.outliers).
        equalize_depthwise: scale each input channel of a quantized depthwise conv up toward
            the edge of the tensor's range, folding the inverse into the conv's filters, so the
            narrow channels get nearly the INT8 resolution of a per-channel scale (same float
            function; one per-channel Mul; mtc.quant.equalize).
        exact_image_input: a quantized conv that reads a per-channel normalization of a tensor
            reads that tensor instead, the normalization folded into its weights (same float
            function); where the tensor is a [0, 1] image on the calibration data its INT8 grid
            is the 8-bit image's own, so quantizing the image costs nothing
            (mtc.quant.image_input). uint8 activations only.
        affine_correction: fit a per-channel gamma/beta against FP32 and fold it into the
            weight scales and biases (mtc.quant.affine; zero inference cost).
        float_budget: share of the model's MACs (0..1) that may stay in float where measured
            sensitivity says it buys the most fidelity: each layer that fits the budget is
            returned to float one at a time on the check clips, and the layers removing the most
            error per MAC are kept in float while they fit
            (mtc.quant.sensitivity.spend_float_budget). 0 = off.
        weight_bits: 8 (|w| <= 127), 7 (|w| <= 63: exact on CPUs without VNNI, whose integer
            kernels saturate on full-range weights), or None: 8, and 7 instead where the
            integer kernels of the CPU that quantizes measure worse than their own float
            simulation and 7 bits check better (mtc.quant.pipeline.choose_weight_bits). With
            `learning`, decided before it learns, on the calibrated plan: 7 where the kernels
            measure unfaithful, so learning runs once.
        float_budget_probes: at most this many layers are probed for the float budget (each
            probe is one check on every check clip). When more fit the budget, the ones whose
            isolated INT8 output error per MAC is largest are probed (mtc.quant.affine).
        learning: None, or PTQ4VM's settings: after range calibration, learn the weights'
            rounding, the activations' step sizes and a per-layer affine against FP32 on the
            same Q/DQ plan (mtc.quant.ptq4vm). The learned affine then replaces the
            closed-form one of `affine_correction`.
        float_outgrown: a quantized layer whose input (or quantized output) outgrows its
            calibrated range on the check frames (mtc.quant.coverage) stays in float, the worst
            first, up to a quarter of the quantized layers: there clipping, not rounding, is the
            INT8 error, and on the footage the check stands for. Off: such layers stay INT8 and the
            report only lists them.
        check_backend: whose integer kernels the checks run on, and so the gates, the float
            budget, the fallback and every choice between candidates (weight bits, trained or
            closed-form affine): "onnxruntime", or "openvino" for the placements made for it.
            Kernels differ in how faithfully they compute the same Q/DQ graph, so a choice
            measured on one backend can be the wrong one for another.
    """

    method: str = "mse"
    percentile: float = 99.99
    op_types: tuple[str, ...] | None = None
    activation_matmuls: bool | None = None
    quantize_outputs: bool = True
    exclude_nodes: tuple[str, ...] = ()
    min_mac_share: float = 0.0
    activation_type: str = "int8"
    align_channels: bool = False
    weight_rounding: str = "nearest"
    equalize_concats: bool = True
    split_outlier_channels: bool = False
    equalize_depthwise: bool = False
    exact_image_input: bool = False
    affine_correction: bool = True
    float_budget: float = 0.0
    float_budget_probes: int = 24
    weight_bits: int | None = None
    learning: Ptq4vmConfig | None = None
    float_outgrown: bool = True
    check_backend: str = "onnxruntime"

    def __post_init__(self):
        if not 0.0 <= self.float_budget <= 1.0:
            raise MtcError(f"float budget {self.float_budget:g} is not a share of the MACs in [0, 1]",
                           hint="pass --float-budget as a percentage, e.g. 2")
        if self.float_budget_probes < 1:
            raise MtcError(f"float budget probes {self.float_budget_probes} must be at least 1",
                           hint="pass --float-budget 0 to turn the float budget off instead")
        if self.weight_bits not in (None, 7, 8):
            raise MtcError(f"weight bits {self.weight_bits} is not 7 or 8", hint="use --weight-bits 7, 8 or auto")
        if self.weight_rounding not in WEIGHT_ROUNDING:
            raise MtcError(f"unknown weight rounding {self.weight_rounding!r}",
                           hint=f"choose one of: {', '.join(WEIGHT_ROUNDING)}")
        unknown = sorted(set(self.op_types or ()) - set(QUANTIZABLE_OPS))
        if unknown:
            raise MtcError(f"no INT8 rule for op type {', '.join(unknown)}",
                           hint=f"choose among: {', '.join(QUANTIZABLE_OPS)}")
        if self.split_outlier_channels and self.quantize_outputs:
            # The split conv's output is a partial sum that the outliers' conv completes: it can
            # reach the size of the bias it cancels, far outside the sum's own range.
            raise MtcError("the outlier-channel split needs Q/DQ on conv inputs and weights only",
                           hint="set split_outlier_channels=False to quantize conv outputs")
        if self.exact_image_input and self.activation_type != "uint8":
            # int8's symmetric range cannot put 256 levels of a [0, 1] image on its grid
            raise MtcError("the exact image input needs uint8 activations",
                           hint="set exact_image_input=False for int8 (TensorRT) activations")
        if self.check_backend not in CHECK_BACKENDS:
            raise MtcError(f"unknown check backend {self.check_backend!r}",
                           hint=f"choose one of: {', '.join(CHECK_BACKENDS)}")
        if self.learning is not None and self.weight_rounding != "nearest":
            raise MtcError(f"PTQ4VM learns the weights' rounding itself: it does not combine with "
                           f"{self.weight_rounding} rounding", hint="drop --weight-rounding")


PRESETS: dict[str, Int8Config] = {
    # CPU backends (the default): integer kernels end to end only for the layers that carry the
    # compute (each holding >= 1.5% of the MACs). Small and depthwise layers stay float: on a
    # CPU they cost more in Q/DQ conversions than INT8 saves, and every quantized layer adds
    # error. Up to 4% of the MACs stay float where removal sensitivity finds them worth it (on
    # a recurrent video model, two bottleneck convs), because that buys back the most error per MAC given up.
    # Measured figures: docs/quantization.md, "Presets".
    "speed": Int8Config(min_mac_share=0.015, activation_type="uint8", align_channels=True, float_budget=0.04),
    # OpenVINO: its CPU plugin runs small INT8 convs fast too, so convs down to 0.5% of the MACs
    # are quantized: faster there, at more error. Not lower: a smaller threshold was faster
    # still but left the error targets behind. Not the default: on ONNX Runtime the extra small
    # layers cost more in conversions than they save. Figures: docs/quantization.md, "Presets".
    "openvino": Int8Config(min_mac_share=0.005, activation_type="uint8", align_channels=True, float_budget=0.04,
                           check_backend="openvino"),
    # TensorRT style: every conv, Q/DQ on inputs and weights only; the builder fuses outputs.
    "tensorrt": Int8Config(quantize_outputs=False),
    # Every conv in INT8 for OpenVINO, no float budget: the placement PTQ4VM's learning is for
    # (--method ptq4vm), where the learned rounding and step sizes, not float layers, carry the
    # fidelity. Q/DQ on the convs' inputs and weights only, as NNCF and PTQ4VM place them: a conv
    # output quantized before a hardswish, sigmoid or tanh spends its 256 steps on a wide
    # pre-activation range exactly where the function is steep, and OpenVINO fuses those
    # functions and the next conv's quantization into the conv anyway, so it runs faster
    # without them too (measured: docs/quantization.md, "Presets"). With every conv in
    # INT8, no float layer absorbs a conv whose input has an outlier channel, so such channels get
    # a float conv of their own (a sliver of the MACs), a depthwise conv, whose channels
    # spread widely and which the other presets keep in float, gets its input channels equalized,
    # and the first conv reads the 8-bit image on its own grid rather than its normalization.
    "dense": Int8Config(activation_type="uint8", align_channels=True, check_backend="openvino",
                        quantize_outputs=False, split_outlier_channels=True, equalize_depthwise=True,
                        exact_image_input=True),
}


def with_recipe(config: Int8Config, op_types: tuple[str, ...], activation_matmuls: bool) -> Int8Config:
    """`config` with what it leaves open (None) taken from the artifact's quantization recipe."""
    return dataclasses.replace(
        config, op_types=config.op_types if config.op_types is not None else tuple(op_types),
        activation_matmuls=config.activation_matmuls if config.activation_matmuls is not None else activation_matmuls)


def preset(name: str, **overrides) -> Int8Config:
    if name not in PRESETS:
        raise MtcError(f"unknown INT8 preset {name!r}", hint=f"choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
