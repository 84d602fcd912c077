"""Missing optional engines are one-line errors that name the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mtc.errors import MtcError
from mtc.serve import local_triton
from mtc.serve.ray_batch import import_ray


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MtcError) as caught:
        import_ray()
    assert "needs the ray package" in caught.value.message and caught.value.hint == "pip install 'mtc[ray]'"


def _probe_answers(monkeypatch, answer: dict):
    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(answer) + "\n", stderr="")

    monkeypatch.setattr(local_triton.subprocess, "run", run)


def test_a_server_environment_without_pytriton_names_the_extra(monkeypatch):
    _probe_answers(monkeypatch, {"missing": "pytriton"})
    with pytest.raises(MtcError, match=r"lacks pytriton.*mtc\[triton-server\]"):
        local_triton.describe_environment("python3")


def test_a_server_environment_with_numpy_2_is_refused(monkeypatch):
    _probe_answers(monkeypatch, {"dist": "/x", "libs": "/y", "libdir": "/z", "version": "3.11", "numpy": "2.4.6",
                                 "bin": "/b"})
    with pytest.raises(MtcError, match="numpy 2.4.6.*needs numpy < 2"):
        local_triton.describe_environment("python3")


def test_an_interpreter_that_does_not_run_is_named(tmp_path):
    with pytest.raises(MtcError, match="cannot run the Triton environment's Python"):
        local_triton.describe_environment(tmp_path / "no-such-python")
