"""The package layering: arrows point down only, and generic packages name no model family."""

import ast
import re
from pathlib import Path

import mtc

ROOT = Path(mtc.__file__).parent

# What each layer may import from mtc (besides itself). Lower layers never reach up.
ALLOWED = {
    "errors": set(),
    "safe_text": set(),
    "fsutil": {"errors"},
    "artifact": {"errors", "fsutil", "safe_text"},
    "passes": {"errors", "graph_edit"},
    "backends": {"errors", "fsutil", "artifact", "passes"},
    "runtime": {"errors", "fsutil", "artifact", "backends"},
    # The built-in frames are drawn with the runtime's own image and video code.
    "data": {"errors", "fsutil", "artifact", "backends", "runtime"},
}
GENERIC = ("artifact", "backends", "passes", "runtime", "data", "export", "quant", "bench", "serve")
FAMILY = re.compile(r"\b(rvm|modnet|u2netp?|u²-?netp?|bgmv2|backgroundmattingv2|birefnet|inspyrenet|matanyone|pdfnet)\b",
                    re.IGNORECASE)


def _layer(module: str) -> str:
    return module.split(".")[1] if module.startswith("mtc.") else ""


def _mtc_imports(path: Path) -> set[str]:
    """Every mtc module this file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mtc":
                found.update(f"mtc.{alias.name}" for alias in node.names)
            elif node.module.startswith("mtc."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mtc."))
    return found


def _files(layer: str):
    target = ROOT / layer
    return sorted(target.rglob("*.py")) if target.is_dir() else [ROOT / f"{layer}.py"]


def test_lower_layers_never_import_upper_ones():
    bad = []
    for layer, allowed in ALLOWED.items():
        for path in _files(layer):
            for module in _mtc_imports(path):
                target = _layer(module)
                if target != layer and target not in allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        source = _layer("mtc." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in _mtc_imports(path):
            target = _layer(module)
            if target and target != source:
                edges.setdefault(source, set()).add(target)
    # The CLI and the package root sit on top: they may import anything, nothing imports them
    # except the entry point.
    for top in ("cli", "__main__", "__init__"):
        edges.pop(top, None)

    def reach(start, seen):
        for nxt in edges.get(start, ()):
            if nxt not in seen:
                seen.add(nxt)
                reach(nxt, seen)
        return seen

    cycles = [f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if a in reach(b, set())]
    assert not cycles, "\n".join(sorted(cycles))


def test_generic_packages_name_no_model_family():
    hits = []
    for layer in GENERIC:
        for path in _files(layer):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if FAMILY.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "family knowledge belongs on the family's spec:\n" + "\n".join(hits)
