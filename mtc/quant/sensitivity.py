"""Per-layer sensitivity and automatic fallback.

Sensitivity of a layer = the temporal and spatial error (dtSSD + MAD vs FP32) when that layer
alone is quantized. Fallback keeps the most sensitive layers in float, doubling how many until
the gates pass, then trims the set back down (layers whose return to INT8 keeps the gates green
go back), so the artifact keeps as much INT8 as the gates allow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from mtc.quant.checks import CheckResult, ReferenceAlphas
from mtc.quant.config import Gates
from mtc.quant.qdq import QdqPlan, insert_qdq
from mtc.runtime.backends import OrtBackend

log = logging.getLogger("mtc")


def candidate_backend(model: onnx.ModelProto, plan: QdqPlan, amax: dict[str, float]) -> OrtBackend:
    return OrtBackend(insert_qdq(model, plan, amax).SerializeToString())


def layer_sensitivity(model: onnx.ModelProto, plan: QdqPlan, amax: dict[str, float], probe: ReferenceAlphas,
                      *, progress: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """MAD and dtSSD vs FP32 on the probe clips with only one layer quantized, for every layer."""
    scores = {}
    no_gates = Gates(max_mad=None, max_dtssd=None)
    for name in plan.node_names:
        result = probe.check(candidate_backend(model, plan.only([name]), amax), no_gates, with_grad=False)
        scores[name] = {"mad": max(c.mad for c in result.clips), "dtssd": max(c.dtssd for c in result.clips)}
        if progress:
            progress()
    return scores


@dataclass
class FallbackResult:
    plan: QdqPlan
    check: CheckResult
    fallback_nodes: list[str]
    steps: list[dict] = field(default_factory=list)  # what each attempt kept in float and what it measured


def fallback_until_gates_pass(model: onnx.ModelProto, plan: QdqPlan, amax: dict[str, float], check: ReferenceAlphas,
                              gates: Gates, sensitivity: dict[str, dict[str, float]], *,
                              max_fraction: float = 0.5) -> FallbackResult:
    ranked = sorted(plan.node_names, key=lambda n: -(sensitivity[n]["mad"] + sensitivity[n]["dtssd"]))
    limit = max(1, int(len(ranked) * max_fraction))
    steps = []

    def attempt(excluded: list[str]) -> CheckResult:
        result = check.check(candidate_backend(model, plan.without(excluded), amax), gates, with_grad=False)
        steps.append({"float_layers": len(excluded), "mad": max(c.mad for c in result.clips),
                      "dtssd": max(c.dtssd for c in result.clips), "passed": result.passed})
        log.info("fallback: %d layers in float -> worst MAD %.3f, dtSSD %.3f (%s)", len(excluded), steps[-1]["mad"],
                 steps[-1]["dtssd"], "pass" if result.passed else "fail")
        return result

    count, result = 0, attempt([])
    while not result.passed and count < limit:
        count = min(limit, max(1, count * 2))
        result = attempt(ranked[:count])
    excluded = ranked[:count]
    if result.passed and count > 1:
        # Doubling overshoots: give back to INT8 the least sensitive of the excluded layers
        # for as long as the gates stay green.
        for name in reversed(ranked[:count]):
            trial = [n for n in excluded if n != name]
            trial_result = attempt(trial)
            if trial_result.passed:
                excluded, result = trial, trial_result
    return FallbackResult(plan.without(excluded), result, excluded, steps)
