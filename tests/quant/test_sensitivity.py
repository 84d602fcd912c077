"""mtc.quant.sensitivity's fallback search, on stand-in checks (no model)."""

import logging

import numpy as np

from mtc.quant.checks import CheckResult, ClipCheck
from mtc.quant.config import Gates
from mtc.quant.sensitivity import fallback_until_gates_pass


class Plan:
    """The part of a QdqPlan the search uses: its layers and a copy without some."""

    def __init__(self, names, excluded=()):
        self.node_names, self.excluded = list(names), frozenset(excluded)

    def without(self, names):
        return Plan(self.node_names, self.excluded | set(names))


class NeedsFloat:
    """The check as the search calls it: passes (MAD and dtSSD 1, else 3) once any of `sets`
    of layers is in float."""

    def __init__(self, *sets):
        self.sets = [set(s) for s in sets]

    def check(self, plan, gates, *, with_grad):
        error = 1.0 if any(s <= plan.excluded for s in self.sets) else 3.0
        clip = ClipCheck("clip", "64x48", None, mad=error, mse=0.0, grad=0.0, dtssd=error, mad_per_frame=[],
                         dtssd_per_frame=[], nonfinite_frames=[], worst_frame=0, worst_diff=np.zeros((1, 1)))
        return CheckResult([clip], gates)


def test_the_fallback_doubles_then_gives_back_what_the_gates_allow_and_says_which_layer_it_tries(caplog):
    sensitivity = {name: {"mad": 8.0 - rank, "dtssd": 0.0} for rank, name in enumerate("abcdefgh")}
    with caplog.at_level(logging.INFO, logger="mtc"):
        result = fallback_until_gates_pass(lambda plan: plan, Plan("abcdefgh"), NeedsFloat("ac"), Gates(max_mad=2.0, max_dtssd=2.0),
                                           sensitivity)
    # 0, 1, 2 and 4 layers in float (at most half of the 8); then d goes back to INT8 (still
    # passing), c cannot
    assert [s["float_layers"] for s in result.steps] == [0, 1, 2, 4, 3, 2]
    assert result.fallback_nodes == ["a", "b", "c"] and result.check.passed
    messages = [r.getMessage() for r in caplog.records]
    assert "fallback: 3 layers in float (d back in INT8) -> worst MAD 1.000, dtSSD 1.000 (pass)" in messages
    assert "fallback: 2 layers in float (c back in INT8) -> worst MAD 3.000, dtSSD 3.000 (fail)" in messages
    assert "fallback: 4 layers in float -> worst MAD 1.000, dtSSD 1.000 (pass)" in messages


# a and b carry the most error and most of the MACs; g and h little of either
SENSITIVITY = {name: {"mad": 8.0 - rank, "dtssd": 0.0} for rank, name in enumerate("abcdefgh")}
MAC_SHARE = {"a": 0.4, "b": 0.4, "c": 0.1, "d": 0.05, "e": 0.02, "f": 0.01, "g": 0.001, "h": 0.001}
GATES = Gates(max_mad=2.0, max_dtssd=2.0)


def test_with_mac_shares_the_fallback_returns_the_cheap_layers_when_they_pass(caplog):
    # Either the two heaviest or the two cheapest layers in float pass: the cheap ones are chosen.
    with caplog.at_level(logging.INFO, logger="mtc"):
        result = fallback_until_gates_pass(lambda plan: plan, Plan("abcdefgh"), NeedsFloat("ab", "gh"), GATES,
                                           SENSITIVITY, mac_share=MAC_SHARE)
    assert result.check.passed and result.order == "error per MAC"
    assert sorted(result.fallback_nodes) == ["g", "h"]
    assert {s["order"] for s in result.steps[1:]} == {"error per MAC"}  # the error ranking never ran
    messages = [r.getMessage() for r in caplog.records]
    assert "fallback: returning layers to float, most isolated INT8 error per MAC first" in messages
    assert "fallback: 2 layers in float, 0.20% of the MACs -> worst MAD 1.000, dtSSD 1.000 (pass)" in messages


def test_where_the_cheap_layers_cannot_pass_the_fallback_ranks_by_error_alone(caplog):
    with caplog.at_level(logging.INFO, logger="mtc"):
        result = fallback_until_gates_pass(lambda plan: plan, Plan("abcdefgh"), NeedsFloat("ab"), GATES,
                                           SENSITIVITY, mac_share=MAC_SHARE)
    assert result.check.passed and result.order == "error" and result.fallback_nodes == ["a", "b"]
    orders = [s["order"] for s in result.steps]
    # the all-INT8 check once, the cheap half (1, 2, 4 layers) failing, then by error: 1, 2
    assert orders == ["", "error per MAC", "error per MAC", "error per MAC", "error", "error"]
    assert [s["float_layers"] for s in result.steps] == [0, 1, 2, 4, 1, 2]
    assert result.steps[-1]["mac_share"] == result.mac_share == 0.8
    assert "fallback: returning layers to float, most isolated INT8 error first" in [r.getMessage() for r in caplog.records]
