"""Per-layer sensitivity, the float budget and automatic fallback.

Two views of a layer's sensitivity, each the temporal and spatial error (dtSSD + MAD vs FP32):
- quantize one at a time: the error with that layer alone in INT8 (what it adds on its own);
- remove one at a time: the error with every layer but that one in INT8 (what returning it to
  float buys in the real, fully quantized model, where errors compound).
The float budget spends a small share of the model's MACs on the layers whose removal buys the
most error per MAC. Fallback returns layers to float in a ranked order, doubling how many until
the gates pass, then trims the set back down (layers whose return to INT8 keeps the gates green
go back), so the artifact keeps as much INT8 as the gates allow. It ranks by isolated error per
MAC first, which spends little speed, and only where those layers cannot pass the gates by
isolated error alone, which may return the heaviest layers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mtc.backends import Backend
from mtc.quant.checks import CheckResult, ReferenceAlphas
from mtc.quant.config import Gates
from mtc.quant.qdq import QdqPlan

log = logging.getLogger("mtc")


# A plan -> a backend running the quantized model it describes, as the checks' backend runs it.
Runner = Callable[[QdqPlan], Backend]


def worst_clip_errors(result: CheckResult) -> dict[str, float]:
    """The worst clip's MAD and the worst clip's dtSSD."""
    return {"mad": max(c.mad for c in result.clips), "dtssd": max(c.dtssd for c in result.clips)}


def layer_sensitivity(runner: Runner, plan: QdqPlan, probe: ReferenceAlphas, *,
                      progress: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """MAD and dtSSD vs FP32 on the probe clips with only one layer quantized, for every layer."""
    scores = {}
    no_gates = Gates(max_mad=None, max_dtssd=None)
    for name in plan.node_names:
        result = probe.check(runner(plan.only([name])), no_gates, with_grad=False)
        scores[name] = worst_clip_errors(result)
        if progress:
            progress()
    return scores


def removal_sensitivity(runner: Runner, plan: QdqPlan, probe: ReferenceAlphas, layers: Sequence[str], *,
                        progress: Callable[[], None] | None = None
                        ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Worst-clip MAD and dtSSD vs FP32 on the probe clips with every layer in INT8 (the
    baseline), then with every layer but one, for each of `layers`."""
    no_gates = Gates(max_mad=None, max_dtssd=None)
    baseline = worst_clip_errors(probe.check(runner(plan), no_gates, with_grad=False))
    if progress:
        progress()
    scores = {}
    for name in layers:
        result = probe.check(runner(plan.without([name])), no_gates, with_grad=False)
        scores[name] = worst_clip_errors(result)
        if progress:
            progress()
    return baseline, scores


def most_error_per_mac(layers: Sequence[str], errors: dict[str, float], mac_share: dict[str, float]) -> list[str]:
    """`layers` ordered by isolated INT8 output error per MAC, largest first: the layers most
    likely to pay for their MACs in float (spend_float_budget's own order), found without a
    check run per layer. Layers without a measured error keep their order, after the others."""
    measured = sorted((n for n in layers if n in errors), key=lambda n: -errors[n] / max(mac_share.get(n, 0.0), 1e-9))
    return measured + [n for n in layers if n not in errors]


def spend_float_budget(baseline: dict[str, float], removal: dict[str, dict[str, float]], mac_share: dict[str, float],
                       budget: float, *, min_gain: float = 0.05) -> list[str]:
    """The layers to keep in float: most error removed per MAC first, while their MACs fit in
    `budget` (a share of the model's). A layer qualifies only if returning it to float lowers the
    probe's MAD + dtSSD by at least `min_gain` of the all-INT8 value: below that the gain is
    indistinguishable from how the probe's error varies between layers that do not matter."""
    total = baseline["mad"] + baseline["dtssd"]
    gains = {name: total - (s["mad"] + s["dtssd"]) for name, s in removal.items()}
    qualified = [name for name, gain in gains.items() if gain >= min_gain * total and gain > 0]
    chosen, spent = [], 0.0
    for name in sorted(qualified, key=lambda n: -gains[n] / max(mac_share.get(n, 0.0), 1e-9)):
        if spent + mac_share.get(name, 0.0) <= budget:
            chosen.append(name)
            spent += mac_share.get(name, 0.0)
    return chosen


@dataclass
class FallbackResult:
    plan: QdqPlan
    check: CheckResult
    fallback_nodes: list[str]
    steps: list[dict] = field(default_factory=list)  # what each attempt kept in float and what it measured
    order: str = "error"  # the ranking that found `fallback_nodes`: "error per MAC" or "error"
    mac_share: float | None = None  # the share of the model's MACs `fallback_nodes` hold, where known


def fallback_until_gates_pass(runner: Runner, plan: QdqPlan, check: ReferenceAlphas, gates: Gates,
                              sensitivity: dict[str, dict[str, float]], *, mac_share: dict[str, float] | None = None,
                              max_fraction: float = 0.5) -> FallbackResult:
    """`plan` with layers returned to float until `check` passes `gates`, at most `max_fraction`
    of them. With `mac_share` (each layer's share of the model's MACs) the layers with the most
    isolated error (`sensitivity`) per MAC are tried first: many small layers can cost less speed
    than one heavy one. Where those fail, the search starts again by isolated error alone."""
    errors = {n: sensitivity[n]["mad"] + sensitivity[n]["dtssd"] for n in plan.node_names}
    limit = max(1, int(len(plan.node_names) * max_fraction))
    orders = [("error", sorted(plan.node_names, key=lambda n: -errors[n]))]
    if mac_share:
        orders.insert(0, ("error per MAC", most_error_per_mac(plan.node_names, errors, mac_share)))
    steps = []

    def share(names: Sequence[str]) -> float | None:
        return round(sum(mac_share.get(n, 0.0) for n in names), 4) if mac_share else None

    def attempt(order: str, excluded: list[str], trying: str = "") -> CheckResult:
        result = check.check(runner(plan.without(excluded)), gates, with_grad=False)
        steps.append({"order": order, "float_layers": len(excluded), **worst_clip_errors(result),
                      "passed": result.passed})
        macs = ""
        if mac_share:
            steps[-1]["mac_share"] = share(excluded)
            macs = f", {steps[-1]['mac_share']:.2%} of the MACs"
        log.info("fallback: %d layers in float%s%s -> worst MAD %.3f, dtSSD %.3f (%s)", len(excluded), macs, trying,
                 steps[-1]["mad"], steps[-1]["dtssd"], "pass" if result.passed else "fail")
        return result

    none_in_float = attempt("", [])
    for order, ranked in orders:
        if len(orders) > 1:
            log.info("fallback: returning layers to float, most isolated INT8 %s first", order)
        excluded, result = _doubling_search(ranked, limit, none_in_float, functools.partial(attempt, order))
        if result.passed:
            break
    return FallbackResult(plan.without(excluded), result, excluded, steps, order, share(excluded))


def _doubling_search(ranked: list[str], limit: int, none_in_float: CheckResult,
                     attempt: Callable[..., CheckResult]) -> tuple[list[str], CheckResult]:
    """The first `count` of `ranked` in float, `count` doubling up to `limit` until the check
    passes; then the last doubling's additions go back to INT8, last ranked first, while it
    still passes. Returns the layers left in float and their check."""
    previous, count, result = 0, 0, none_in_float
    while not result.passed and count < limit:
        previous, count = count, min(limit, max(1, count * 2))
        result = attempt(ranked[:count])
    excluded = ranked[:count]
    if result.passed and count - previous > 1:
        # Doubling overshoots: give back what it added for as long as the gates stay green.
        for name in reversed(ranked[previous:count]):
            trial = [n for n in excluded if n != name]
            trial_result = attempt(trial, f" ({name} back in INT8)")
            if trial_result.passed:
                excluded, result = trial, trial_result
    return excluded, result
