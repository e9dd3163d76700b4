"""A short fine-tune of one compressed site, for the methods a one-shot proxy misjudges.

docs/methods.md pitfall 12: Kronecker products with doping, hashed sharing, LightRNN and pruning start
far from where a few hundred steps take them, so their untrained loss ranks them below methods
that need no training. The profile can give such options a few steps before measuring them.

Only the compressed site's tensors learn (everything else keeps the dense weights), with Adam on
the LM loss over training windows. The model is the profile's shallow copy, whose dense modules
are the caller's: gradients are taken for the site's parameters only (autograd.grad), so no
`.grad` lands on the caller's weights, and the model stays in eval mode, so no shared dropout
module changes mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.data import batchify, bptt_windows
from autoshrink.methods import CompressedWeight

# Methods whose untrained form is a poor proxy for the trained one (pitfall 12).
NEEDS_TRAINING = ("kronecker", "hash", "lightrnn", "prune")
FINETUNE_LR = 1e-3
FINETUNE_BATCH = 20
FINETUNE_BPTT = 35
GRAD_CLIP = 0.25


def finetune_site(
    model: nn.Module,
    built: CompressedWeight,
    train_ids: torch.Tensor,
    steps: int,
    lr: float = FINETUNE_LR,
    seed: int = 0,
) -> None:
    """`steps` Adam steps on `built`'s tensors through `model` (which holds it), in place."""
    if steps <= 0:
        return
    params = [p for p in built.parameters() if p.requires_grad]
    if not params:
        return
    generator = torch.Generator().manual_seed(seed)
    columns = batchify(train_ids.reshape(-1), FINETUNE_BATCH)
    windows = list(bptt_windows(columns, FINETUNE_BPTT))
    order = torch.randperm(len(windows), generator=generator).tolist()
    opt = torch.optim.Adam(params, lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            x, y = windows[order[step % len(order)]]
            logits, _ = model(x, None)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = None if g is None else g
            nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], GRAD_CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
