"""CAML's network parts (Gao et al., MICCAI 2023), as plain torch modules around nnU-Net's own U-Nets.

- ``CrossSampleMutualAttention`` (CMA): a transformer layer over the spatial tokens of each sample, then one across
  the batch at every position, so that labeled and unlabeled samples attend to each other. Training mode only.
- ``make_auxiliary_network``: model A from a freshly built nnU-Net U-Net (same plans as model V): CMA appended to one
  encoder stage (its output then feeds both the skip and the next stage), and every transposed-convolution upsampling
  of the decoder replaced by interpolation + 3x3 convolution, for heterogeneity with model V.
- ``choose_cma_stage``: the encoder stage CMA goes after, from the patch size and the strides of the plan.
- ``EmbeddingHead``: Linear, BatchNorm1d, ReLU, Linear, applied to a set of voxels' feature vectors (the projection
  and prediction heads of the omni-correlation branch).
"""
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class CrossSampleMutualAttention(nn.Module):
    """Input and output: (B, C, *spatial). In training: an intra-sample transformer layer (sequence = the
    prod(spatial) tokens of one sample), then an inter-sample layer (sequence = the B samples, at each position).
    PyTorch's TransformerEncoderLayer (post-norm, ReLU, no positional encoding) as in the authors' code, with FFN width
    4C and dropout 0.5. In eval mode the module is the identity (the authors skip CMA at test time)."""

    def __init__(self, channels: int, heads: int = 4, ffn_factor: int = 4, dropout: float = 0.5):
        super().__init__()
        while channels % heads:
            heads -= 1

        def layer():
            return nn.TransformerEncoderLayer(channels, heads, ffn_factor * channels, dropout, batch_first=True)

        self.intra = layer()
        self.inter = layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        tokens = x.flatten(2).transpose(1, 2)  # (B, S, C): one sequence per sample
        tokens = self.intra(tokens)
        tokens = self.inter(tokens.transpose(0, 1)).transpose(0, 1)  # (S, B, C): one sequence per position
        return tokens.transpose(1, 2).reshape(b, c, *spatial)


class InterpolatingUpsample(nn.Module):
    """Upsampling by interpolation (bilinear/trilinear) followed by a 3x3(x3) convolution: the replacement of a
    transposed convolution with the same channels and stride."""

    def __init__(self, conv_op, in_channels: int, out_channels: int, stride: Sequence[int], bias: bool = True):
        super().__init__()
        self.stride = tuple(int(s) for s in np.atleast_1d(stride))
        self.conv = conv_op(in_channels, out_channels, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = 'bilinear' if x.ndim == 4 else 'trilinear'
        stride = self.stride if len(self.stride) > 1 else self.stride * (x.ndim - 2)
        size = [n * s for n, s in zip(x.shape[2:], stride)]
        return self.conv(F.interpolate(x, size=size, mode=mode, align_corners=False))


def choose_cma_stage(patch_size: Sequence[int], strides: Sequence[Sequence[int]], max_tokens: int = 2048) -> int:
    """The shallowest encoder stage after the first (full-resolution, low-level) one whose feature map has at most
    ``max_tokens`` positions per sample; the bottleneck if none has. The authors put CMA at 1/8 resolution of a
    112x112x80 patch (1960 tokens)."""
    shape = np.array(patch_size, dtype=np.int64)
    sizes = []
    for stride in strides:
        shape = shape // np.broadcast_to(np.array(stride), shape.shape)
        sizes.append(int(np.prod(shape)))
    for stage in range(1, len(sizes)):
        if sizes[stage] <= max_tokens:
            return stage
    return len(sizes) - 1


def make_auxiliary_network(unet: nn.Module, cma_stage: Optional[int], **cma_kwargs) -> nn.Module:
    """Turn a freshly built nnU-Net U-Net (``encoder``/``decoder`` of dynamic_network_architectures) into CAML's
    model A, in place: CMA after encoder stage ``cma_stage`` (None: no CMA) and interpolating upsampling in the
    decoder. Its forward and outputs (deep supervision included) stay those of the U-Net."""
    encoder, decoder = unet.encoder, unet.decoder
    if cma_stage is not None:
        encoder.stages[cma_stage] = nn.Sequential(
            encoder.stages[cma_stage], CrossSampleMutualAttention(encoder.output_channels[cma_stage], **cma_kwargs))
    for s, old in enumerate(decoder.transpconvs):
        decoder.transpconvs[s] = InterpolatingUpsample(encoder.conv_op, old.in_channels, old.out_channels,
                                                       encoder.strides[-(s + 1)], bias=old.bias is not None)
    return unet


class EmbeddingHead(nn.Sequential):
    """(N, in_dim) -> (N, out_dim): Linear, BatchNorm1d, ReLU, Linear (CAML's projection and prediction heads)."""

    def __init__(self, in_dim: int, hidden_dim: int = 32, out_dim: int = 32):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))
