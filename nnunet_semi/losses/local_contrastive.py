"""The local (pixel) contrastive loss of Chaitanya et al. (MedIA 2023), METHODS.md section 5.2.

Per pair of images (x, x'), for every foreground class c present in x, a few anchor pixels z of class c in x (and
likewise in x' with the roles swapped). Prototypes are the class means of the L2-normalised pixel embeddings within
each image; the background is neither anchor nor prototype. With s(a, b) = cos(a, b) / tau:

    D(z) = sum over classes c' present in x of exp s(z, mu_c')  +  sum over classes c' present in x' of exp s(z, mu'_c')
    l(z) = -log(exp s(z, mu_c) / D(z))  -  log(exp s(z, mu'_c) / D(z))

the first term pulls z to its own image's class prototype, the second to the paired image's. A class absent from x'
drops the second term; a class absent from x has no anchors; neither gives NaN. The loss of a pair is the mean of
l(z) over its anchors (the intended normalisation, not the authors' code's running division), and the loss is the
mean over the pairs that have anchors; 0 (with a gradient path) when none has. Computed for all pairs at once.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

_ABSENT = -1e4  # the logit of a prototype of an absent class: exp() of it is 0, and its gradients stay finite


def local_contrastive_loss(embeddings: torch.Tensor, classes: torch.Tensor, num_classes: int,
                           pairs: Sequence[Tuple[int, int]], anchors_per_class: int = 3,
                           temperature: float = 0.1) -> torch.Tensor:
    """embeddings: (N, D, *spatial) pixel embeddings (normalised here, in float32); classes: (N, *spatial) integer
    class of each pixel: 0 background, 1 .. num_classes - 1 foreground, negative = excluded (no label, an uncertain
    pseudo-label); pairs: (i, j) image indices; anchors_per_class: anchors drawn at random without replacement per
    foreground class per image (every pixel of a class that has no more). Returns a scalar."""
    n, d = embeddings.shape[:2]
    z = F.normalize(embeddings.float().reshape(n, d, -1), dim=1).transpose(1, 2)  # N, X, D
    foreground = torch.arange(1, num_classes, device=classes.device)
    members = classes.reshape(n, 1, -1) == foreground[None, :, None]  # N, K, X (K foreground classes)
    present = members.any(-1)  # N, K
    prototypes = F.normalize(torch.bmm(members.float(), z), dim=-1)  # N, K, D (zero where absent)

    # anchors: up to anchors_per_class random pixels of each class in each image
    scores = torch.rand(members.shape, device=z.device).masked_fill(~members, -1.0)
    top, index = scores.topk(min(anchors_per_class, members.shape[-1]), dim=-1)  # N, K, P
    valid = top >= 0
    anchors = torch.gather(z, 1, index.reshape(n, -1, 1).expand(-1, -1, d)).reshape(*index.shape, d)  # N, K, P, D

    # both directions of every pair: anchors of image a against the prototypes of a (own) and of b (other)
    a = torch.tensor([i for i, _ in pairs] + [j for _, j in pairs], device=z.device, dtype=torch.long)
    b = torch.tensor([j for _, j in pairs] + [i for i, _ in pairs], device=z.device, dtype=torch.long)
    own = torch.einsum('mkpd,mld->mkpl', anchors[a], prototypes[a]) / temperature  # M, K, P, K
    other = torch.einsum('mkpd,mld->mkpl', anchors[a], prototypes[b]) / temperature
    keys_present = torch.cat((present[a], present[b]), -1)[:, None, None, :]
    log_denominator = torch.logsumexp(torch.cat((own, other), -1).masked_fill(~keys_present, _ABSENT), -1)  # M, K, P
    positive_own = torch.diagonal(own, dim1=1, dim2=3).transpose(1, 2)  # M, K, P: s(z, mu_c) for anchors of class c
    positive_other = torch.diagonal(other, dim1=1, dim2=3).transpose(1, 2)
    loss = (log_denominator - positive_own) + present[b][:, :, None] * (log_denominator - positive_other)
    loss = torch.where(valid[a], loss, torch.zeros_like(loss))

    pair = torch.arange(len(pairs), device=z.device).repeat(2)
    sums = torch.zeros(len(pairs), device=z.device).index_add(0, pair, loss.sum((1, 2)))
    counts = torch.zeros(len(pairs), device=z.device).index_add(0, pair, valid[a].sum((1, 2)).float())
    has_anchors = counts > 0
    if not bool(has_anchors.any()):
        return embeddings.sum() * 0.0
    return (sums[has_anchors] / counts[has_anchors]).mean()
