"""A bounded memory of labeled voxel embeddings per class (CAML's omni-correlation memory)."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn


class LabeledEmbeddingBank(nn.Module):
    """One slot per (class, labeled case), overwritten whenever that case is seen again, as in the authors' code (the
    bank holds the latest correctly predicted voxels of the latest crop of every labeled case). To bound memory, each
    slot keeps at most ``per_case = max(1, cap_per_class // len(cases))`` embeddings, so a class never holds more than
    ``cap_per_class`` (or ``len(cases)`` if that is larger).

    ``cases``: the labeled cases' keys, each of which owns a slot. Buffers (moved, saved and restored like a
    module's): ``embeddings`` (classes, cases, per_case, dim) and ``counts`` (classes, cases), the number of valid
    rows of each slot, cases in sorted order of their keys."""

    def __init__(self, num_classes: int, cases: Sequence[str], dim: int, cap_per_class: int = 65536):
        super().__init__()
        self.slots = {key: i for i, key in enumerate(sorted(cases))}
        self.per_case = max(1, cap_per_class // len(self.slots))
        self.register_buffer('embeddings', torch.zeros(num_classes, len(self.slots), self.per_case, dim))
        self.register_buffer('counts', torch.zeros(num_classes, len(self.slots), dtype=torch.long))

    def samples_by_case(self, keys: Sequence[str]) -> Dict[str, List[int]]:
        """The positions of each case in a batch's ``keys`` (a case drawn several times pools its crops), in order of
        first appearance. A case without a slot is an error: the split changed after the bank was made."""
        unknown = sorted(set(keys) - set(self.slots))
        if unknown:
            raise RuntimeError(f'labeled case {unknown[0]} is not in the training split this trainer started with; '
                               f'restart training after changing splits_final.json')
        return {case: [i for i, k in enumerate(keys) if k == case] for case in dict.fromkeys(keys)}

    @torch.no_grad()
    def write(self, case: str, label: int, embeddings: torch.Tensor) -> None:
        """Replace the slot of (label, case) with ``embeddings`` (N, dim), detached; N > per_case keeps a random
        per_case of them."""
        if embeddings.shape[0] > self.per_case:
            keep = torch.randperm(embeddings.shape[0], device=embeddings.device)[:self.per_case]
            embeddings = embeddings[keep]
        n, slot = embeddings.shape[0], self.slots[case]
        self.embeddings[label, slot, :n] = embeddings.detach().to(self.embeddings)
        self.counts[label, slot] = n

    def count(self, label: int, case: str) -> int:
        """The embeddings stored for (label, case)."""
        return int(self.counts[label, self.slots[case]])

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
