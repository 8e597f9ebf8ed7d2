"""The siamese contrastive loss of Dhere & Sivaswamy (margin m = 1) over every pair of a batch.

For a pair of embeddings (a, b) with label y (1: same region, 0: different regions) and d = ||a - b||_2:

    L = y * d^2 + (1 - y) * max(0, m - d)^2

A pair is predicted "same region" when d < ``same_distance`` (the authors' 0.75).
"""
from typing import Tuple

import torch


def siamese_contrastive_loss(embeddings: torch.Tensor, regions: torch.Tensor, margin: float = 1.0,
                             same_distance: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean contrastive loss and pair accuracy over every pair i < j of the batch.

    embeddings: (B, D), B >= 2; regions: (B,) integer region (side) of each sample; a pair's label is
    y = [regions_i == regions_j]. Returns (loss, accuracy), scalars; accuracy carries no gradient."""
    if len(embeddings) < 2:
        raise ValueError(f'the siamese loss needs at least 2 samples per batch, got {len(embeddings)}')
    i, j = torch.triu_indices(len(regions), len(regions), 1, device=embeddings.device)
    same = (regions[i] == regions[j]).float()
    d2 = (embeddings[i] - embeddings[j]).float().pow(2).sum(1)
    d = torch.sqrt(d2.clamp_min(1e-12))  # a finite gradient at d = 0
    loss = same * d2 + (1 - same) * torch.clamp(margin - d, min=0).pow(2)
    accuracy = ((d.detach() < same_distance).float() == same).float().mean()
    return loss.mean(), accuracy
