"""Conv-norm-activation building blocks, in the layout torchvision-trained checkpoints use.

These modules import torch at the top: only the families' ``net`` modules import them, never the
family packages themselves (which the registry imports to list models).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def norm(channels: int, *, folded: bool = False, eps: float = 1e-5) -> nn.Module:
    """A batch norm, or an Identity in a folded model.

    A folded model carries each batch norm inside the conv before it (weight and bias). The
    Identity has no keys but keeps the slot in its Sequential, so every other key stays where
    the checkpoint has it.

    Args:
        channels: Channels normalised.
        folded: Return the Identity.
        eps: The batch norm's epsilon (torchvision: 1e-5; its MobileNetV3 uses 1e-3).

    Returns:
        ``nn.BatchNorm2d(channels, eps=eps)`` or ``nn.Identity()``.
    """
    return nn.Identity() if folded else nn.BatchNorm2d(channels, eps=eps)


def conv_norm_act(cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
                  act: Callable[[], nn.Module] | None, folded: bool = False, eps: float = 1e-5) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: ``[conv, norm, activation]``, keys ``0.*`` and ``1.*``.

    Args:
        cin: Input channels.
        cout: Output channels.
        kernel: Square kernel size (odd); the padding keeps the size at stride 1.
        stride: Conv stride.
        dilation: Conv dilation.
        groups: Conv groups (``cin`` for a depthwise conv).
        act: Activation factory; None puts an Identity in its slot (a linear projection).
        folded: See :func:`norm`; the conv then has a bias.
        eps: The batch norm's epsilon.

    Returns:
        The three-module Sequential.
    """
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=folded),
        norm(cout, folded=folded, eps=eps),
        act() if act is not None else nn.Identity(),
    )


class Mlp(nn.Module):
    """A transformer's MLP: Linear, GELU, Linear (keys fc1, fc2), as Swin and ViT checkpoints name it."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
