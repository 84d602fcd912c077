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
from mtc.quant.qdq import QdqPlan
from mtc.runtime.backends import OrtBackend

log = logging.getLogger("mtc")


Builder = Callable[[QdqPlan], onnx.ModelProto]  # a plan -> the quantized model it describes


def candidate_backend(build: Builder, plan: QdqPlan) -> OrtBackend:
    return OrtBackend(build(plan).SerializeToString())


def layer_sensitivity(build: Builder, plan: QdqPlan, probe: ReferenceAlphas, *,
                      progress: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """MAD and dtSSD vs FP32 on the probe clips with only one layer quantized, for every layer."""
    scores = {}
    no_gates = Gates(max_mad=None, max_dtssd=None)
    for name in plan.node_names:
        result = probe.check(candidate_backend(build, plan.only([name])), no_gates, with_grad=False)
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


def fallback_until_gates_pass(build: Builder, plan: QdqPlan, check: ReferenceAlphas, gates: Gates,
                              sensitivity: dict[str, dict[str, float]], *, max_fraction: float = 0.5) -> FallbackResult:
    ranked = sorted(plan.node_names, key=lambda n: -(sensitivity[n]["mad"] + sensitivity[n]["dtssd"]))
    limit = max(1, int(len(ranked) * max_fraction))
    steps = []

    def attempt(excluded: list[str]) -> CheckResult:
        result = check.check(candidate_backend(build, plan.without(excluded)), gates, with_grad=False)
        steps.append({"float_layers": len(excluded), "mad": max(c.mad for c in result.clips),
                      "dtssd": max(c.dtssd for c in result.clips), "passed": result.passed})
        log.info("fallback: %d layers in float -> worst MAD %.3f, dtSSD %.3f (%s)", len(excluded), steps[-1]["mad"],
                 steps[-1]["dtssd"], "pass" if result.passed else "fail")
        return result

    previous, count, result = 0, 0, attempt([])
    while not result.passed and count < limit:
        previous, count = count, min(limit, max(1, count * 2))
        result = attempt(ranked[:count])
    excluded = ranked[:count]
    if result.passed and count - previous > 1:
        # Doubling overshoots: give back to INT8, least sensitive first, the layers the last
        # doubling added, for as long as the gates stay green.
        for name in reversed(ranked[previous:count]):
            trial = [n for n in excluded if n != name]
            trial_result = attempt(trial)
            if trial_result.passed:
                excluded, result = trial, trial_result
    return FallbackResult(plan.without(excluded), result, excluded, steps)
