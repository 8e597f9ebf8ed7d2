"""A reconstruction decoder for nnU-Net's encoders (MASSL, Chen et al., MICCAI 2019), as a plain torch module.

``ReconstructionDecoder`` decodes the bottleneck of a ``PlainConvEncoder``/``ResidualEncoder`` of
dynamic_network_architectures back to full resolution *without skip connections*: stage by stage it mirrors nnU-Net's
``UNetDecoder`` (the same transposed convolutions, kernel sizes, norm, nonlinearity and number of convolutions per
stage), but each stage sees only the stage below it. A final 1x1 convolution gives ``out_channels`` linear outputs
(the inputs are z-scored by nnU-Net, so no sigmoid).
"""
from typing import Sequence, Union

import torch
from torch import nn

from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks


class ReconstructionDecoder(nn.Module):
    """bottleneck (B, encoder.output_channels[-1], *spatial / prod(strides)) -> (B, out_channels, *spatial)."""

    def __init__(self, encoder: nn.Module, out_channels: int, n_conv_per_stage: Union[int, Sequence[int]] = 2):
        super().__init__()
        n_stages = len(encoder.output_channels)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n_stages - 1)
        transpconv = get_matching_convtransp(encoder.conv_op)
        upsamplings, stages = [], []
        for s in range(1, n_stages):
            below, here, stride = encoder.output_channels[-s], encoder.output_channels[-(s + 1)], encoder.strides[-s]
            upsamplings.append(transpconv(below, here, stride, stride, bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(
                n_conv_per_stage[s - 1], encoder.conv_op, here, here, encoder.kernel_sizes[-(s + 1)], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs))
        self.upsamplings = nn.ModuleList(upsamplings)
        self.stages = nn.ModuleList(stages)
        self.output = encoder.conv_op(encoder.output_channels[0], out_channels, 1, 1, 0, bias=True)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        x = bottleneck
        for upsample, stage in zip(self.upsamplings, self.stages):
            x = stage(upsample(x))
        return self.output(x)
