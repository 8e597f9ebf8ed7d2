"""The pixel-embedding projection head of the local contrastive loss (Chaitanya et al., METHODS.md section 5.1)."""
from torch import nn
from dynamic_network_architectures.building_blocks.helper import get_matching_batchnorm


class ProjectionHead(nn.Module):
    """Two 1x1(x1) convolutions on a feature map: conv (no bias) -> BatchNorm -> ReLU -> conv (no bias, linear).

    conv_op: nn.Conv2d or nn.Conv3d (the U-Net's). Input (B, in_channels, *spatial); output (B, dim, *spatial), not
    normalised (the loss normalises)."""

    def __init__(self, in_channels: int, conv_op=nn.Conv3d, dim: int = 16):
        super().__init__()
        self.layers = nn.Sequential(
            conv_op(in_channels, dim, 1, bias=False), get_matching_batchnorm(conv_op)(dim), nn.ReLU(inplace=True),
            conv_op(dim, dim, 1, bias=False))

    def forward(self, x):
        return self.layers(x)
