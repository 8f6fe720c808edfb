"""Training cost in dense-equivalent FLOPs, counting sparse layers at their density.

Only the targets (Conv/Linear weights) are counted: a layer's forward pass costs
``2 * weight.numel() * positions`` FLOPs per example (``positions``: output spatial positions of a
conv, output rows of a linear layer), scaled by the fraction of its weights kept; a training step
costs three forward passes (forward, and backward with respect to inputs and to weights), as in
the RigL paper's accounting. Norms, activations and the optimizer are left out; they cost the
same for every method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..sparsity import MaskSet, Target

TRAINING_PASSES = 3


@torch.no_grad()
def target_forward_flops(model: nn.Module, targets: Sequence[Target], example: torch.Tensor | tuple) -> list[int]:
    """Dense forward FLOPs per example of each target, from one forward pass on ``example`` (no batch axis;
    a tuple is the model's positional inputs, each without the batch axis)."""
    flops = [0] * len(targets)
    handles = []
    for i, target in enumerate(targets):
        module = model.get_submodule(target.module_name)
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or target.param is not module.weight:
            continue

        def hook(module, inputs, output, i=i):
            channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            flops[i] = 2 * module.weight.numel() * (output.numel() // channels)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        inputs = example if isinstance(example, tuple) else (example,)
        model(*(x.unsqueeze(0).to(device) for x in inputs))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return flops


def training_flops_per_example(forward_flops: Sequence[int], masks: MaskSet | None) -> float:
    """FLOPs of one training example with ``masks`` in force (dense when None)."""
    if masks is None:
        return float(TRAINING_PASSES * sum(forward_flops))
    densities = [kept / target.numel for kept, target in zip(masks.kept_counts(), masks.targets)]
    return float(TRAINING_PASSES * sum(f * d for f, d in zip(forward_flops, densities)))
