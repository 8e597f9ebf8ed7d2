"""The siamese contrastive loss of Dhere & Sivaswamy (margin m = 1) over every pair of a batch.

For a pair of embeddings (a, b) with label y (1: same region, 0: different regions) and d = ||a - b||_2:

    L = y * d^2 + (1 - y) * max(0, m - d)^2

A pair is predicted "same region" when d < ``same_distance`` (the authors' 0.75).
"""
from typing import Tuple

import torch


def pairwise_distances(embeddings: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Squared and plain Euclidean distances of every pair i < j.

    embeddings: (B, D). Returns (d2, d), each (B * (B - 1) / 2,), in the order of ``torch.triu_indices(B, B, 1)``.
    d has a finite gradient at d = 0."""
    i, j = torch.triu_indices(len(embeddings), len(embeddings), 1, device=embeddings.device)
    d2 = (embeddings[i] - embeddings[j]).float().pow(2).sum(1)
    return d2, torch.sqrt(d2.clamp_min(1e-12))


def siamese_contrastive_loss(embeddings: torch.Tensor, regions: torch.Tensor, margin: float = 1.0,
                             same_distance: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean contrastive loss and pair accuracy over every pair i < j of the batch.

    embeddings: (B, D), B >= 2; regions: (B,) integer region (side) of each sample; a pair's label is
    y = [regions_i == regions_j]. Returns (loss, accuracy), scalars; accuracy carries no gradient."""
    if len(embeddings) < 2:
        raise ValueError(f'the siamese loss needs at least 2 samples per batch, got {len(embeddings)}')
    i, j = torch.triu_indices(len(regions), len(regions), 1, device=regions.device)
    same = (regions[i] == regions[j]).float()
    d2, d = pairwise_distances(embeddings)
    loss = same * d2 + (1 - same) * torch.clamp(margin - d, min=0).pow(2)
    accuracy = ((d.detach() < same_distance).float() == same).float().mean()
    return loss.mean(), accuracy
