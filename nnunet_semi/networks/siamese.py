"""One branch of the siamese pair: nnU-Net's planned encoder, its bottleneck as the embedding."""
import torch
from torch import nn


class BottleneckEmbedding(nn.Module):
    """Embeds a batch with ``encoder`` (a dynamic_network_architectures encoder that returns its skips): the last
    stage's feature map, global-average-pooled (``pooled``) or flattened (the authors'; needs a fixed patch size), and
    L2-normalised (``normalize``; makes the margin 1 meaningful, the authors did not normalise).

    x: (B, C, *patch) -> (B, D), D = bottleneck channels (pooled) or channels x bottleneck voxels (flattened).
    The module holds no parameters of its own: both branches of the pair are this one encoder (shared weights)."""

    def __init__(self, encoder: nn.Module, pooled: bool = True, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.pooled = pooled
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        bottleneck = features[-1] if isinstance(features, (list, tuple)) else features
        embedding = bottleneck.mean(dim=tuple(range(2, bottleneck.ndim))) if self.pooled else bottleneck.flatten(1)
        return nn.functional.normalize(embedding.float(), dim=1) if self.normalize else embedding
