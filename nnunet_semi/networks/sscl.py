"""SSCL's network (Zhang et al., "Self-Supervised Correction Learning for Semi-Supervised Biomedical Image
Segmentation", MICCAI 2021), as plain torch modules around nnU-Net's own U-Nets.

- ``GatedFeatureFusion`` (GFF): fuses the features of the image and of the image with its predicted foreground
  blanked out, through a reset gate, a select gate and a candidate (the authors' ReLU on the candidate, orthogonal
  initialisation, zero bias); ``AddFusion`` and ``ConcatFusion`` are the paper's ablations.
- ``SSCLNetwork``: nnU-Net's planned encoder E and segmentation decoder D_S, an inpainting decoder D_I of the same
  layout with one linear output per input channel at every deep supervision scale, and one fusion module per encoder
  level (every skip and the bottleneck; with ``fuse_full_resolution=False`` every level but the full-resolution skip,
  where D_S reads the image's features and D_I the blanked image's). Its forward is the two-pass segmentation and
  returns what nnU-Net's network returns (a list over deep supervision scales, or the full-resolution logits when
  ``decoder.deep_supervision`` is off), so nnU-Net trains, validates and predicts with it.
"""
from typing import List, Tuple

import torch
from torch import nn

from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He


class GatedFeatureFusion(nn.Module):
    """(e_seg, e_inp) -> e, all (B, C, *spatial):

        r = sigmoid(W_r [e_seg, e_inp]),  s = sigmoid(W_s [e_seg, e_inp])
        e~ = ReLU(W_c [e_seg, r * e_inp]),  e = s * e~ + (1 - s) * e_seg

    with 3x3(x3) convolutions 2C -> C."""

    def __init__(self, conv_op, channels: int):
        super().__init__()
        self.reset_gate, self.select_gate, self.candidate = (conv_op(2 * channels, channels, 3, 1, 1) for _ in range(3))
        for conv in (self.reset_gate, self.select_gate, self.candidate):
            nn.init.orthogonal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, e_seg: torch.Tensor, e_inp: torch.Tensor) -> torch.Tensor:
        both = torch.cat((e_seg, e_inp), 1)
        r = torch.sigmoid(self.reset_gate(both))
        s = torch.sigmoid(self.select_gate(both))
        candidate = torch.relu(self.candidate(torch.cat((e_seg, r * e_inp), 1)))
        return s * candidate + (1 - s) * e_seg


class AddFusion(nn.Module):
    """e = e_seg + e_inp (the paper's "add" ablation)."""

    def __init__(self, conv_op, channels: int):
        super().__init__()

    def forward(self, e_seg: torch.Tensor, e_inp: torch.Tensor) -> torch.Tensor:
        return e_seg + e_inp


class ConcatFusion(nn.Module):
    """e = W [e_seg, e_inp], a 1x1(x1) convolution 2C -> C (the paper's "concat" ablation)."""

    def __init__(self, conv_op, channels: int):
        super().__init__()
        self.conv = conv_op(2 * channels, channels, 1, 1, 0)

    def forward(self, e_seg: torch.Tensor, e_inp: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((e_seg, e_inp), 1))


FUSIONS = {'gff': GatedFeatureFusion, 'add': AddFusion, 'concat': ConcatFusion}


def foreground(logits: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) logits -> (B, 1, *spatial) bool: the union of the predicted foreground classes (argmax is not
    background), or for nnU-Net's region training (``regions`` a True bool tensor) any region's sigmoid above 0.5."""
    by_class = logits.argmax(1, keepdim=True) != 0
    by_region = (logits > 0).any(1, keepdim=True)
    return torch.where(regions, by_region, by_class)


class SSCLNetwork(nn.Module):
    """The two-pass segmentation model of SSCL on a U-Net of dynamic_network_architectures (``encoder``/``decoder``).

    Pass 1 segments the image (no gradient: its mask is a hard threshold); the predicted foreground is set to 0 in the
    image; pass 2 encodes the original and the blanked image, fuses them level by level and decodes the segmentation
    (and, in training, the inpainting). The pass-1 encoding of the image is reused in pass 2 (the same values as
    recomputing it, one encoder pass fewer)."""

    def __init__(self, unet: nn.Module, num_input_channels: int, fusion: str = 'gff',
                 fuse_full_resolution: bool = True):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f'unknown fusion {fusion!r}; one of {sorted(FUSIONS)}')
        self.encoder, self.decoder = unet.encoder, unet.decoder
        n_conv = [len(stage.convs) for stage in self.decoder.stages]
        self.inpainting_decoder = UNetDecoder(self.encoder, num_input_channels, n_conv, deep_supervision=True)
        self.inpainting_decoder.apply(InitWeights_He(1e-2))
        self.first_fused = 0 if fuse_full_resolution else 1  # the encoder level the fusions start at
        self.fusions = nn.ModuleList(FUSIONS[fusion](self.encoder.conv_op, c)
                                     for c in self.encoder.output_channels[self.first_fused:])
        # set by the trainer for region-based datasets; a buffer, so that the predictor's strict load restores it
        self.register_buffer('regions', torch.tensor(False))

    def forward(self, x: torch.Tensor):
        return self.segment(x)[0]

    def segment(self, x: torch.Tensor) -> Tuple[object, List[torch.Tensor]]:
        """Both passes; returns (D_S's output on the fused features, D_I's input: the fused features of every level,
        at full resolution the blanked image's own when that level is not fused)."""
        skips = self.encoder(x)
        with torch.no_grad():
            coarse = self.decoder(skips)
            coarse = coarse[0] if isinstance(coarse, (list, tuple)) else coarse
            blanked = x * ~foreground(coarse, self.regions)
        hidden = self.encoder(blanked)
        first = self.first_fused
        fused = [fuse(e_seg, e_inp) for fuse, e_seg, e_inp in zip(self.fusions, skips[first:], hidden[first:])]
        return self.decoder(skips[:first] + fused), hidden[:first] + fused

    def inpaint(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """D_I on its input from ``segment``: the inpainted image at every deep supervision scale, full resolution
        first."""
        return self.inpainting_decoder(features)
