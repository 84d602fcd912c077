"""What every model family package promises, checked across all registered families."""

import subprocess
import sys


def test_listing_the_models_imports_no_torch():
    """The registry imports every family to list models; their torch modules (net.py) wait for
    an export, so `mtc models` and the runtime stay light."""
    code = ("import sys; from mtc.models.registry import list_models; "
            "names = [m.name for m in list_models()]; print(' '.join(names)); print(' '.join(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, modules = run.stdout.splitlines()[0].split(), set(run.stdout.splitlines()[1].split())
    assert {"rvm", "modnet", "u2net", "u2netp", "bgmv2"} <= set(names)
    assert "torch" not in modules
    assert not {m for m in modules if m.startswith("mtc.models.") and m.endswith(".net")}
