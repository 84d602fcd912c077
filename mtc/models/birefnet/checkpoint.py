"""Reading BiRefNet checkpoints: Hugging Face `model.safetensors` or official `.pth` (imports torch).

The format is told by the bytes, not the file name (the cache and `--weights` may name a file
anything): a safetensors file starts with the little-endian length of its JSON header, then
the header's `{`; a `.pth` file is a zip archive (or, from old PyTorch, a pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtc.errors import MtcError
from mtc.export.torch_export import MAX_LISTED_MISMATCHES, read_state_dict

# DataParallel's and torch.compile's wrappers; ToonOut's keys carry both ("module._orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffers a checkpoint may lack without changing the model: BatchNorm's counter (not used in
# eval) and Swin's relative position index (derived from the window size).
DERIVED_BUFFERS = ("num_batches_tracked", "relative_position_index")


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without any leading run of `module.` / `_orig_mod.` prefixes, in whatever order they nest."""
    stripped = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def is_safetensors(path: Path) -> bool:
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path` (safetensors or `.pth`), wrapper prefixes stripped."""
    path = Path(path)
    if is_safetensors(path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MtcError("reading .safetensors checkpoints needs the safetensors package",
                           hint="pip install 'mtc[export]'") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise MtcError(f"cannot read {path}: {type(exc).__name__}: {exc}",
                           hint="the file is damaged; download it again") from None
    else:
        state = read_state_dict(path, strip_prefixes=())
    return strip_wrapper_prefixes(state)


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `module`, refusing any missing, unexpected or mis-shaped key; the error
    names the first mismatches, which tells a user they passed another variant's file."""
    expected = module.state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key not in state and key.rsplit(".", 1)[-1] in DERIVED_BUFFERS:
            state[key] = value
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "wrong shape": [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                        if k in state and state[k].shape != v.shape],
    }
    parts = [f"{len(items)} {label}: {', '.join(items[:MAX_LISTED_MISMATCHES])}"
             + (f" (+{len(items) - MAX_LISTED_MISMATCHES} more)" if len(items) > MAX_LISTED_MISMATCHES else "")
             for label, items in problems.items() if items]
    if parts:
        raise MtcError(f"checkpoint {source} does not fit {type(module).__name__}: " + "; ".join(parts),
                       hint="pass the checkpoint of this variant (the lite ones use swin_v1_t, the others swin_v1_l)")
    module.load_state_dict(state, strict=True)
