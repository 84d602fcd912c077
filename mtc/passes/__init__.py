"""Graph passes: rewrites a backend runs on its graph, as a registry.

Each pass has a name, the backend and stage it belongs to, a predicate (does it apply to this
graph and context?) and an exactness statement: "bit-exact", or the bound a named test checks.
Backends run the passes of their stages through `run_passes` and cache what comes out, keyed by
the model's hash and `fingerprint()` (the passes' own code), so a built artifact loads without
running any pass, and a changed pass never serves a stale graph.

Stages:
- "onnx": on the ONNX proto before the backend reads it;
- "read": once on the backend's graph as read;
- "static": on the backend's graph once it has static shapes (one run per input signature).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("onnx", "read", "static")
# Packages whose import registers passes; adding a pass package is one line here.
PASS_MODULES = ("mtc.passes.onnxruntime", "mtc.passes.openvino")
PASS_SOURCES = Path(__file__).parent  # every module whose code a pass can run


@dataclass(frozen=True)
class PassContext:
    """What a pass may need beyond the graph.

    Attributes:
        frame_sizes: the (height, width) of the image inputs, for static-stage passes that only
            rewrite full-resolution tensors.
    """

    frame_sizes: frozenset[tuple[int, int]] = field(default_factory=frozenset)


@dataclass(frozen=True)
class GraphPass:
    """One rewrite.

    Attributes:
        name: what it does, as a log line names it ("upsample_as_transposed_conv").
        backend: the backend whose graph it rewrites.
        stage: one of STAGES.
        exactness: "bit-exact", or "within <bound> (<test that checks it>)".
        run: run(model, context) -> how many places it rewrote (in place; "onnx" passes return
            (new model, result) instead).
        applies: applies(context) -> whether to run it at all here.
        describe: the log phrase for a count, e.g. "{} identity resize(s) dropped".
    """

    name: str
    backend: str
    stage: str
    exactness: str
    run: Callable[[Any, PassContext], Any]
    describe: str
    applies: Callable[[PassContext], bool] = lambda context: True


_PASSES: list[GraphPass] = []


def register_pass(graph_pass: GraphPass) -> GraphPass:
    if graph_pass.stage not in STAGES:
        raise ValueError(f"pass {graph_pass.name}: unknown stage {graph_pass.stage!r}")
    if any(p.name == graph_pass.name and p.backend == graph_pass.backend for p in _PASSES):
        raise ValueError(f"pass {graph_pass.name} registered twice for {graph_pass.backend}")
    _PASSES.append(graph_pass)
    return graph_pass


def all_passes() -> tuple[GraphPass, ...]:
    for module in PASS_MODULES:
        importlib.import_module(module)
    return tuple(_PASSES)


def passes_for(backend: str, stage: str) -> tuple[GraphPass, ...]:
    return tuple(p for p in all_passes() if p.backend == backend and p.stage == stage)


def run_passes(model: Any, *, backend: str, stage: str, context: PassContext = PassContext()) -> dict[str, int]:
    """Run the backend's passes of one stage on `model` in place; returns how many places each rewrote."""
    counts = {}
    for graph_pass in passes_for(backend, stage):
        counts[graph_pass.name] = graph_pass.run(model, context) if graph_pass.applies(context) else 0
    return counts


def onnx_passes_apply(backend: str, context: PassContext = PassContext()) -> bool:
    """Whether any of the backend's "onnx" passes would run here (else the proto need not be parsed)."""
    return any(p.applies(context) for p in passes_for(backend, "onnx"))


def run_onnx_passes(proto: Any, *, backend: str, context: PassContext = PassContext()) -> tuple[Any, dict[str, Any]]:
    """Run the backend's "onnx" passes that apply on an onnx.ModelProto: the rewritten proto and
    what each returned (a count, or what the pass reports, e.g. the outputs it merged)."""
    results = {}
    for graph_pass in passes_for(backend, "onnx"):
        if graph_pass.applies(context):
            proto, results[graph_pass.name] = graph_pass.run(proto, context)
    return proto, results


def describe_counts(backend: str, stage: str, counts: dict[str, int]) -> str:
    """One log phrase per pass, in registry order."""
    return ", ".join(p.describe.format(counts.get(p.name, 0)) for p in passes_for(backend, stage))


def fingerprint(backend: str) -> str:
    """A digest of the backend's passes and their code: a cache of rewritten graphs keyed by it
    is never served after a pass changes."""
    return _fingerprint(tuple(p for p in all_passes() if p.backend == backend))


@functools.cache
def _fingerprint(passes: tuple[GraphPass, ...]) -> str:
    # Computed once per set of passes: every backend load asks for it. A pass's code can live in
    # any module of this package (registrations hold lambdas), so all of their sources count.
    digest = hashlib.sha256()
    for graph_pass in passes:
        digest.update(f"{graph_pass.name}/{graph_pass.stage}".encode())
    for source in sorted(PASS_SOURCES.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]
