"""Small utilities on nnU-Net's U-Nets (dynamic_network_architectures), as plain torch code."""
from contextlib import contextmanager

import torch


@contextmanager
def frozen(parameters):
    """The parameters get no gradient inside the block (gradients still flow through the modules they belong to)."""
    parameters = list(parameters)
    flags = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(parameters, flags):
            p.requires_grad_(flag)


def decoder_parameters(decoder: torch.nn.Module):
    """The parameters of a decoder alone (nnU-Net's UNetDecoder also holds its encoder as a submodule)."""
    return [p for name, p in decoder.named_parameters() if not name.startswith('encoder.')]


class Captured:
    value = None


@contextmanager
def output_of(module: torch.nn.Module):
    """Inside the block, the latest output of ``module`` is kept in the yielded object's ``value`` (a forward hook,
    removed on leaving): how a method reads intermediate features of nnU-Net's U-Net without changing its forward."""
    captured = Captured()

    def hook(_module, _inputs, output):
        captured.value = output

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
