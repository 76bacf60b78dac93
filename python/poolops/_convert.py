"""poolops.nn.convert: swap torch.nn layers of a model for their poolops twins."""
from __future__ import annotations

import copy
from typing import Iterable, NamedTuple

import torch

KINDS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Conv2d")


class Swap(NamedTuple):
    name: str  # qualified module name, as in model.named_modules()
    old: str
    new: str

    def __str__(self):
        return f"{self.name}: {self.old} -> {self.new}"


def _twins(kinds: Iterable[str]):
    from . import nn as pnn

    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"convert(): unknown kinds {sorted(unknown)}; choose from {list(KINDS)}")
    return {getattr(torch.nn, k): getattr(pnn, k) for k in kinds}


def convert(model: torch.nn.Module, kinds: Iterable[str] = KINDS, *, inplace: bool = False,
            include_subclasses: bool = False, return_report: bool = False):
    """Returns `model` with every torch.nn MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d, AdaptiveMaxPool2d and Conv2d (those named in `kinds`)
    replaced by the poolops module with the same hyper-parameters.

    The replacement takes over the original's attributes, so parameters,
    buffers, hooks and the training flag carry over and the state_dict keys and
    values are unchanged. Subclasses of those layers are left alone (their
    forward may differ) unless include_subclasses=True. With inplace=False the
    model is deep-copied first. With return_report=True, returns
    (model, [Swap(name, old, new), ...])."""
    twins = _twins(kinds)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert(): expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    ours = tuple(twins.values())
    report = []
    done = {}  # id -> replacement, so a module shared in two places stays shared

    def twin_of(module):
        if isinstance(module, ours):
            return None
        if type(module) in twins:
            return twins[type(module)]
        if include_subclasses:
            return next((new for old, new in twins.items() if isinstance(module, old)), None)
        return None

    def swapped(module):
        if id(module) in done:
            return done[id(module)]
        new_cls = twin_of(module)
        if new_cls is None:
            return module
        new = new_cls.__new__(new_cls)
        new.__dict__.update(module.__dict__)
        done[id(module)] = new
        return new

    root = swapped(model)
    if root is not model:
        report.append(Swap("", type(model).__name__, type(root).__name__))
    for name, parent in list(root.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            new = swapped(child)
            if new is not child:
                parent._modules[child_name] = new
                full = f"{name}.{child_name}" if name else child_name
                report.append(Swap(full, f"{type(child).__module__}.{type(child).__name__}",
                                   f"{type(new).__module__}.{type(new).__name__}"))
    return (root, report) if return_report else root
