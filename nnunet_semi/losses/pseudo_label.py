"""The confidence-masked pseudo-label loss of weak-to-strong self-training, on nnU-Net's outputs.

Shapes: logits (B, K, *spatial), or a list over deep-supervision scales as nnU-Net's network returns them with deep
supervision on; pseudo-labels (B, *spatial) class indices (softmax training) or (B, R, *spatial) in {0, 1} (nnU-Net's
region training, sigmoid); mask (B, *spatial) or (B, R, *spatial) bool, True where the pseudo-label is confident.
Targets and masks are given at full resolution and downsampled to each scale as nnU-Net downsamples its targets
(nearest-exact); the scales are weighted with nnU-Net's deep-supervision weights.
"""
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def pseudo_labels(logits: torch.Tensor, regions: bool, threshold) -> tuple:
    """(pseudo-labels, confidence, mask) of full-resolution logits, without gradient. Softmax: argmax, its
    probability, mask where it reaches ``threshold`` (a float, or a (K,) tensor: one per predicted class). Regions:
    per channel p > 0.5, confidence max(p, 1 - p)."""
    with torch.no_grad():
        logits = logits.float()
        if regions:
            p = torch.sigmoid(logits)
            labels = (p > 0.5).float()
            confidence = torch.maximum(p, 1 - p)
            return labels, confidence, confidence >= threshold
        p = torch.softmax(logits, 1)
        confidence, labels = p.max(1)
        t = threshold[labels] if torch.is_tensor(threshold) else threshold
        return labels, confidence, confidence >= t


def largest_component(labels: torch.Tensor, regions: bool) -> torch.Tensor:
    """Pseudo-labels with each foreground class (each region channel) reduced to its largest connected component per
    sample (BCP's post-processing of the teacher's labels); the rest becomes background. Computed on the CPU (scipy),
    face connectivity."""
    from scipy import ndimage
    array = labels.detach().cpu().numpy()
    out = np.zeros_like(array)
    for i in range(array.shape[0]):
        channels = [(array[i, r] > 0, (i, r), 1) for r in range(array.shape[1])] if regions else \
            [(array[i] == k, (i,), k) for k in np.unique(array[i]) if k != 0]
        for binary, index, value in channels:
            components, n = ndimage.label(binary)
            if n:
                largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
                out[index][components == largest] = value
    return torch.from_numpy(out).to(labels.device)


def class_balance_weights(labels: torch.Tensor, mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) weights, one per class: the inverse share of each class among the confident voxels, scaled so that the
    weights of all confident voxels sum to their number (each class present then weighs as much in total as every
    other; absent classes get 0)."""
    counts = torch.bincount(labels[mask].long().flatten(), minlength=num_classes).float()
    present = counts > 0
    weights = torch.zeros(num_classes, device=labels.device)
    if bool(present.any()):
        weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _resize(t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    if tuple(t.shape[-len(spatial):]) == tuple(spatial):
        return t
    extra = t.ndim - len(spatial) == 1  # (B, *spatial): add a channel for interpolate
    x = t[:, None] if extra else t
    out = F.interpolate(x.float(), size=list(spatial), mode='nearest-exact')
    return (out[:, 0] if extra else out).to(t.dtype)


def masked_pseudo_label_loss(logits, labels: torch.Tensor, mask: torch.Tensor, regions: bool = False,
                             scale_weights: Optional[Sequence[float]] = None, dice: bool = False,
                             class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy (BCE for regions) of ``logits`` against ``labels`` on the voxels of ``mask``, averaged over
    them, plus with ``dice`` a soft Dice over the masked voxels; summed over deep-supervision scales with
    ``scale_weights`` (default nnU-Net's: 1, 1/2, 1/4, ... normalised). 0, with a gradient path and never NaN, where
    no voxel is confident. ``class_weights`` (K,): each voxel's CE weighted by its pseudo-label's class (softmax)."""
    outputs = list(logits) if isinstance(logits, (list, tuple)) else [logits]
    if scale_weights is None:
        w = [1 / 2 ** i for i in range(len(outputs))]
        scale_weights = [x / sum(w) for x in w]
    total = outputs[0].sum() * 0.0
    for out, weight in zip(outputs, scale_weights):
        if weight == 0:
            continue
        spatial = out.shape[2:]
        y, m = _resize(labels, spatial), _resize(mask.to(torch.uint8), spatial).bool()
        out = out.float()
        if regions:
            per_voxel = F.binary_cross_entropy_with_logits(out, y.float(), reduction='none')
            m_f = m.float()
        else:
            per_voxel = F.cross_entropy(out, y.long(), reduction='none')
            m_f = m.float() * (class_weights[y.long()] if class_weights is not None else 1.0)
        loss = (per_voxel * m_f).sum() / m_f.sum().clamp_min(1.0)
        if dice:
            loss = loss + soft_dice_loss(out, y, m, regions)
        total = total + weight * loss
    return total


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, regions: bool,
                   smooth: float = 1e-5) -> torch.Tensor:
    """1 - the batch soft Dice over the foreground classes (regions), on masked voxels only."""
    if regions:
        p, onehot, m = torch.sigmoid(logits), labels.float(), mask.float()
    else:
        p = torch.softmax(logits, 1)[:, 1:]
        onehot = F.one_hot(labels.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
        m = mask.float()[:, None]
    dims = [0] + list(range(2, logits.ndim))
    intersection = (p * onehot * m).sum(dims)
    size = ((p + onehot) * m).sum(dims)
    return 1 - ((2 * intersection + smooth) / (size + smooth)).mean()
