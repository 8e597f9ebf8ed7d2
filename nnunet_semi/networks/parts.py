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
