"""Exponential moving average of a network's weights (the Mean Teacher's teacher)."""
import torch
from torch import nn


def ema_decay_at(iteration: int, decay: float) -> float:
    """Tarvainen & Valpola's warm-up of the decay: min(1 - 1/(iteration + 1), decay). The teacher follows the student
    closely in the first iterations (decay 0 at iteration 0, 0.5 at 1, 2/3 at 2, ...) and with `decay` later."""
    return min(1.0 - 1.0 / (iteration + 1), decay)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, for every parameter; buffers (norm statistics, counters) are
    copied from source. Both modules must have the same structure."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)
