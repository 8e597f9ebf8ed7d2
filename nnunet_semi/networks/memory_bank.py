"""A bounded memory of labeled voxel embeddings per class (CAML's omni-correlation memory)."""
from typing import Optional

import torch
from torch import nn


class LabeledEmbeddingBank(nn.Module):
    """One slot per (class, labeled case), overwritten whenever that case is seen again, as in the authors' code (the
    bank holds the latest correctly predicted voxels of the latest crop of every labeled case). To bound memory, each
    slot keeps at most ``per_case = max(1, cap_per_class // num_cases)`` embeddings, so a class never holds more than
    ``cap_per_class`` (or ``num_cases`` if that is larger).

    Buffers (moved, saved and restored like a module's): ``embeddings`` (classes, cases, per_case, dim) and
    ``counts`` (classes, cases), the number of valid rows of each slot."""

    def __init__(self, num_classes: int, num_cases: int, dim: int, cap_per_class: int = 65536):
        super().__init__()
        self.per_case = max(1, cap_per_class // num_cases)
        self.register_buffer('embeddings', torch.zeros(num_classes, num_cases, self.per_case, dim))
        self.register_buffer('counts', torch.zeros(num_classes, num_cases, dtype=torch.long))

    @torch.no_grad()
    def write(self, case: int, label: int, embeddings: torch.Tensor) -> None:
        """Replace the slot of (label, case) with ``embeddings`` (N, dim), detached; N > per_case keeps a random
        per_case of them."""
        if embeddings.shape[0] > self.per_case:
            keep = torch.randperm(embeddings.shape[0], device=embeddings.device)[:self.per_case]
            embeddings = embeddings[keep]
        n = embeddings.shape[0]
        self.embeddings[label, case, :n] = embeddings.detach().to(self.embeddings)
        self.counts[label, case] = n

    def size(self, label: int) -> int:
        return int(self.counts[label].sum())

    @torch.no_grad()
    def sample(self, label: int, n: int) -> Optional[torch.Tensor]:
        """``n`` stored embeddings of ``label`` drawn uniformly without replacement (n, dim), or None when fewer than
        ``n`` are stored."""
        valid = torch.arange(self.per_case, device=self.counts.device)[None] < self.counts[label][:, None]
        stored = self.embeddings[label][valid]
        if stored.shape[0] < n:
            return None
        return stored[torch.randperm(stored.shape[0], device=stored.device)[:n]]
