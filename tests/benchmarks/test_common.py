"""benchmarks/common.py: the run line every RESULTS.md section opens with."""

from __future__ import annotations

import pytest

from mtc.bench.machine import machine_info


@pytest.fixture(scope="module")
def common(script_module):
    with script_module("common") as module:
        yield module


def test_the_run_line_names_the_machines_cpu_class_or_the_one_its_isa_flags_give(common):
    machine = {"date": "2026-12-05", "cpu": "AMD EPYC", "cores": 2, "isa": ["avx2", "avx512_vnni"]}
    line = common.ran_on({"machine": machine}, "python benchmarks/bench_x.py --flag")
    assert line == "`python benchmarks/bench_x.py --flag` — 2026-12-05, AMD EPYC (class avx512-vnni), 2 cores"
    assert "(class avx2)" in common.ran_on({"machine": {**machine, "isa": ["avx2"]}}, "x")
    assert "(class amx)" in common.ran_on({"machine": {**machine, "cpu_class": "amx"}}, "x")
    assert "(class other)" in common.ran_on({"machine": {**machine, "cpu_class": "other"}}, "x")


def test_the_machine_description_carries_this_cpus_class():
    from mtc.backends.cpu import cpu_class

    assert machine_info()["cpu_class"] == cpu_class()
