"""Flat parameter vectors and their mapping back to a module's named tensors.

The study works with a point ``w`` in ``R^N`` (all trainable parameters of a
network, concatenated in ``model.named_parameters()`` order). This module turns
such flat vectors into the ``{name: tensor}`` dictionaries that
:func:`torch.func.functional_call` expects, and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ParamSpec", "flat_params"]


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a module's trainable parameters.

    Attributes
    ----------
    names
        Parameter names in ``model.named_parameters()`` order.
    shapes
        Shape of each parameter.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_module(cls, model: nn.Module) -> ParamSpec:
        """Describe the trainable parameters of ``model``."""
        items = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
        if not items:
            raise ValueError("model has no trainable parameters")
        names, shapes = zip(*items, strict=True)
        return cls(tuple(names), tuple(shapes))

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of entries of each parameter."""
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def num_params(self) -> int:
        """Total number of trainable parameters ``N``."""
        return sum(self.numels)

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``w`` of shape ``(..., N)`` into named views of shape ``(..., *s)``.

        Leading batch dimensions are kept, so a stack of ``S`` points gives
        tensors of shape ``(S, *shape)`` suitable for :func:`torch.vmap`.
        """
        if w.shape[-1] != self.num_params:
            raise ValueError(
                f"flat vector has {w.shape[-1]} entries, the model has "
                f"{self.num_params} trainable parameters"
            )
        lead = w.shape[:-1]
        parts = torch.split(w, self.numels, dim=-1)
        return {
            n: p.reshape(*lead, *s)
            for n, p, s in zip(self.names, parts, self.shapes, strict=True)
        }

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate named tensors (same order as :attr:`names`) into ``(N,)``."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])


def flat_params(model: nn.Module) -> torch.Tensor:
    """Return a detached copy of the trainable parameters of ``model`` as ``(N,)``.

    Examples
    --------
    >>> from torch import nn
    >>> flat_params(nn.Linear(3, 2)).shape
    torch.Size([8])
    """
    return torch.cat(
        [p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]
    ).clone()
