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


class Check:
    """The check as the search calls it: passes when layers a and c are in float."""

    def check(self, plan, gates, *, with_grad):
        error = 1.0 if {"a", "c"} <= plan.excluded else 3.0
        clip = ClipCheck("clip", "64x48", None, mad=error, mse=0.0, grad=0.0, dtssd=error, mad_per_frame=[],
                         dtssd_per_frame=[], nonfinite_frames=[], worst_frame=0, worst_diff=np.zeros((1, 1)))
        return CheckResult([clip], gates)


def test_the_fallback_doubles_then_gives_back_what_the_gates_allow_and_says_which_layer_it_tries(caplog):
    sensitivity = {name: {"mad": 8.0 - rank, "dtssd": 0.0} for rank, name in enumerate("abcdefgh")}
    with caplog.at_level(logging.INFO, logger="mtc"):
        result = fallback_until_gates_pass(lambda plan: plan, Plan("abcdefgh"), Check(), Gates(max_mad=2.0, max_dtssd=2.0),
                                           sensitivity)
    # 0, 1, 2 and 4 layers in float (at most half of the 8); then d goes back to INT8 (still
    # passing), c cannot
    assert [s["float_layers"] for s in result.steps] == [0, 1, 2, 4, 3, 2]
    assert result.fallback_nodes == ["a", "b", "c"] and result.check.passed
    messages = [r.getMessage() for r in caplog.records]
    assert "fallback: 3 layers in float (d back in INT8) -> worst MAD 1.000, dtSSD 1.000 (pass)" in messages
    assert "fallback: 2 layers in float (c back in INT8) -> worst MAD 3.000, dtSSD 3.000 (fail)" in messages
    assert "fallback: 4 layers in float -> worst MAD 1.000, dtSSD 1.000 (pass)" in messages
