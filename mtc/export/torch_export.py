"""PyTorch side of export: load official checkpoints strictly, export to ONNX, run as a reference.

torch is an optional extra (`mtc[export]`): it is imported inside functions, and a missing
install is reported with the extra to add.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mtc.errors import MtcError

MAX_LISTED_MISMATCHES = 5


def require_torch():
    try:
        import torch
    except ImportError:
        raise MtcError("this model is exported from PyTorch, which is not installed",
                       hint="pip install 'mtc[export]' (pins the CPU build torch==2.13.0)") from None
    return torch


def read_state_dict(path: Path, *, strip_prefixes: Sequence[str] = ("module.",)) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True and strip DataParallel-style prefixes."""
    torch = require_torch()
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text goes on to suggest weights_only=False, which would run whatever the
        # safe loader just refused: say what was refused and why, never that.
        found = re.search(r"GLOBAL ([\w.]+)|Unsupported operand \d+", str(exc))
        what = "" if found is None else f" ({found[1] or found[0]})"
        raise MtcError(f"refused to load checkpoint {path}: its pickled content is not plain tensors{what}; "
                       "unpickling it could run code, so the safe loader stops (the file is damaged or unsafe)",
                       hint="use the official checkpoint (download it again); a file from elsewhere needs "
                            "re-saving as a plain state dict by someone who trusts it") from None
    except Exception as exc:  # torch raises many unrelated types for damaged or foreign files
        raise MtcError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                       hint="the file is corrupt or not a PyTorch state dict; download it again") from None
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise MtcError(f"{path} does not hold a state dict", hint="pass the official checkpoint file")
    cleaned = {}
    for key, value in state.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        cleaned[key] = value
    return cleaned


# Buffers that some official checkpoints lack because they were saved by a PyTorch that did
# not have them yet (BatchNorm's counter appeared in 0.4.1). They play no part at inference.
OPTIONAL_BUFFERS = ("num_batches_tracked",)


def load_checkpoint(module, path: Path, *, strip_prefixes: Sequence[str] = ("module.",),
                    optional_buffers: Sequence[str] = OPTIONAL_BUFFERS) -> None:
    """Load `path` into `module`, refusing any missing, unexpected or mis-shaped key.

    The error lists the first mismatches, which is what tells a user they passed the
    checkpoint of another model or variant. Missing `optional_buffers` keep the module's value.
    """
    state = read_state_dict(path, strip_prefixes=strip_prefixes)
    expected = module.state_dict()
    for key, value in expected.items():
        if key not in state and key.rsplit(".", 1)[-1] in optional_buffers:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if items:
                shown = ", ".join(items[:MAX_LISTED_MISMATCHES])
                more = f" (+{len(items) - MAX_LISTED_MISMATCHES} more)" if len(items) > MAX_LISTED_MISMATCHES else ""
                parts.append(f"{len(items)} {label}: {shown}{more}")
        raise MtcError(f"checkpoint {Path(path).name} does not fit {type(module).__name__}: " + "; ".join(parts),
                       hint="pass the official checkpoint for this model and --variant")
    module.load_state_dict(state, strict=True)


def export_onnx(module, example_inputs: tuple, *, input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: dict[str, dict[int, str]] | None = None, opset: int = 17) -> onnx.ModelProto:
    """Export with the TorchScript exporter, which gives compact graphs for these CNNs.

    (The dynamo exporter needs onnxscript and produces larger graphs for the same modules.)
    """
    torch = require_torch()
    buffer = io.BytesIO()
    module.eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice is not the user's concern
        torch.onnx.export(module, example_inputs, buffer, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes or {}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


class TorchBackend:
    """A PyTorch module behind the runtime's Backend protocol: the reference for parity checks."""

    name = "torch"

    def __init__(self, module, *, input_names: Sequence[str], output_names: Sequence[str]):
        self.module = module.eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = require_torch()
        with torch.inference_mode():
            outputs = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names))
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}


def save_random_checkpoint(module, path: Path, *, prefix: str = "", seed: int = 0,
                           drop_buffers: Sequence[str] = ()) -> Path:
    """Save `module` with random weights in its own key layout, as a stand-in for an official file.

    Norm layers get random affine parameters and running statistics (instead of the identity
    they start with), so the network computes something non-trivial and parity checks exercise
    every layer. `prefix` reproduces wrappers such as DataParallel's "module."; `drop_buffers`
    leaves out buffers an old PyTorch would not have saved (e.g. "num_batches_tracked").
    """
    torch = require_torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Every weight from the seeded generator, so the file does not depend on the global RNG
        # (i.e. on which tests ran before).
        for sub in module.modules():
            if isinstance(sub, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                fan_in = sub.weight[0].numel()
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) / fan_in ** 0.5)
                if sub.bias is not None:
                    sub.bias.copy_(torch.randn(sub.bias.shape, generator=generator) * 0.1)
        for sub in module.modules():
            if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                n = sub.num_features
                if sub.affine:
                    sub.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                    sub.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                if sub.track_running_stats:
                    sub.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                    sub.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
    state = {f"{prefix}{k}": v for k, v in module.state_dict().items() if k.rsplit(".", 1)[-1] not in drop_buffers}
    path = Path(path)
    torch.save(state, str(path))
    return path
