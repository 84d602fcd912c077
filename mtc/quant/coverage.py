"""How well the calibrated INT8 ranges cover other footage: per quantized activation, the
squared error its Q/DQ loses to clipping on the check frames, against what it loses to rounding
and what it lost to clipping on the calibration data.

Ranges are fitted to the calibration data. Footage unlike it can drive a tensor far past its
range, and then clipping, not rounding, is the INT8 error. On the recurrent video model's real
footage this happened where the dense preset's depthwise equalization had scaled up channels
that were quiet on the calibration clip and woke up (docs/quantization.md, "What happens, in
order", step 7). Checking on the user's own footage (`--check`) then names those tensors, where
a worse check score alone would not say why, and the layers reading them stay in float."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from mtc.quant.qdq import INT8_MAX, UINT8_MAX, ActivationRange, QdqPlan, activation_quant
from mtc.quant.ranges import TensorStats, clipping_error, exposed_runs

# Listed in the report: the tensors whose clipping error on the check frames exceeds OUTGROWN
# times the larger of their rounding error and their clipping error on the calibration data
# (both per value). Not just "clipping exceeds rounding": MSE ranges may trade clipping for
# finer steps on the calibration data itself (a heavy tail clipped at the optimum), and a
# check clip of other scenes moves that balance a little without outgrowing the range.
OUTGROWN = 2.0
# At most this share of the quantized layers stays float because the check frames outgrow their
# ranges (`Int8Config.float_outgrown`): beyond it the calibration data do not fit the footage at
# all, and calibrating on footage like it is the fix, not float layers.
FLOAT_SHARE = 0.25
# Check frames measured, spread over the clips: each takes a run per memory-sized group of
# tensors, and a dozen frames tell a range that footage outgrows as well as all of them.
COVERAGE_FRAMES = 12


@dataclass(frozen=True)
class Coverage:
    tensor: str
    clipped_share: float  # of the tensor's values on the check frames
    clip_to_round: float  # squared clipping error over the expected rounding error (step^2 / 12 per value)
    calibration_clip_to_round: float  # the same on the calibration data

    @property
    def outgrown(self) -> bool:
        return self.clip_to_round > OUTGROWN * max(1.0, self.calibration_clip_to_round)


def representable(value_range: ActivationRange, activation_type: str) -> tuple[float, float]:
    """The values a Q/DQ pair with `value_range` passes unclipped (its lowest and highest level)."""
    scale, zero_point = activation_quant(value_range, activation_type)
    if activation_type == "int8":
        return -(INT8_MAX + 1) * scale, INT8_MAX * scale
    return (0 - int(zero_point)) * scale, (UINT8_MAX - int(zero_point)) * scale


def range_coverage(model: onnx.ModelProto, ranges: Mapping[str, ActivationRange], feeds: Sequence[dict], *,
                   stats: Mapping[str, TensorStats], activation_type: str, progress=None) -> list[Coverage]:
    """Per tensor of `ranges` (tensors of `model`, before Q/DQ), its clipping on `feeds` and,
    from its calibration `stats`, on the calibration data; the worst first. `progress` as in
    `mtc.quant.ranges.exposed_runs` (one step per feed)."""
    bounds = {name: representable(r, activation_type) for name, r in ranges.items()}
    clipped = dict.fromkeys(bounds, 0)
    clip_error = dict.fromkeys(bounds, 0.0)
    count = dict.fromkeys(bounds, 0)
    for group, outputs in exposed_runs(model, list(bounds), feeds, progress=progress):
        for name in group:
            values = outputs[name]
            low, high = bounds[name]
            excess = values - np.clip(values, low, high)
            clipped[name] += int(np.count_nonzero(excess))
            clip_error[name] += float(np.square(excess, dtype=np.float64).sum())
            count[name] += values.size
    result = []
    for name, (low, high) in bounds.items():
        if not count[name]:
            continue
        rounding = max(((high - low) / UINT8_MAX) ** 2 / 12, 1e-30)  # both types span 255 steps
        calibration = stats.get(name)
        calibration_ratio = clipping_error(calibration, low, high) / (rounding * calibration.count) \
            if calibration is not None and calibration.count else 0.0
        result.append(Coverage(name, clipped[name] / count[name], clip_error[name] / (rounding * count[name]),
                               calibration_ratio))
    return sorted(result, key=lambda c: -c.clip_to_round)


def layers_to_keep_float(coverage: Sequence[Coverage], plan: QdqPlan) -> list[str]:
    """The layers of `plan` whose Q/DQ sit on an outgrown tensor, the worst tensor first, while
    they fit FLOAT_SHARE of the plan's layers (at least one, never all)."""
    limit = min(max(1, int(len(plan.nodes) * FLOAT_SHARE)), len(plan.nodes) - 1)
    kept: list[str] = []
    for c in coverage:
        if not c.outgrown:
            continue
        layers = [name for name in plan.nodes_on(c.tensor) if name not in kept]
        if len(kept) + len(layers) > limit:
            break
        kept += layers
    return kept


def coverage_report(coverage: Sequence[Coverage], readers: Mapping[str, str], frames: int,
                    kept_float: Sequence[str] = ()) -> dict:
    """report.json's `range_coverage`: how many tensors were measured on how many check frames,
    the ones the check frames outgrew (`Coverage.outgrown`; `readers`: the quantized layers
    whose Q/DQ sit on each, for the reader) and the layers kept in float for them."""
    return {"frames": frames, "tensors": len(coverage), "kept_float": list(kept_float),
            "outgrown": [{"tensor": c.tensor, "read_by": readers.get(c.tensor, ""),
                          "clipped_share": round(c.clipped_share, 6), "clip_to_round": round(c.clip_to_round, 2),
                          "calibration_clip_to_round": round(c.calibration_clip_to_round, 2)}
                         for c in coverage if c.outgrown]}
