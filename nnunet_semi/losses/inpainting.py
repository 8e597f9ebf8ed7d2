"""SSCL's inpainting loss: L1 between the inpainted and the real image inside the (detached) predicted foreground, at
every deep supervision scale."""
from typing import Sequence

import torch
import torch.nn.functional as F


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over the voxels p with mask(p) (and over channels) of |prediction(p) - target(p)|.

    prediction, target: (B, C, *spatial); mask: (B, 1, *spatial) bool. Returns a scalar; 0 (never NaN, with a finite
    gradient) when the mask is empty."""
    mask = mask.to(prediction.dtype)
    total = ((prediction.float() - target.float()).abs() * mask).sum()
    return total / (mask.sum() * prediction.shape[1]).clamp_min(1)


def inpainting_loss(inpaintings: Sequence[torch.Tensor], image: torch.Tensor, masks: Sequence[torch.Tensor],
                    weights: Sequence[float]) -> torch.Tensor:
    """sum_k w_k masked_l1(inpaintings[k], image resized to its shape, masks[k]).

    inpaintings: (B, C, *spatial_k) per scale, full resolution first; image: (B, C, *spatial); masks: (B, 1,
    *spatial_k) bool per scale. The image is resized with (bi/tri)linear interpolation, align_corners=True (the
    authors' downsampling)."""
    mode = 'bilinear' if image.ndim == 4 else 'trilinear'
    loss = image.new_zeros((), dtype=torch.float32)
    for inpainting, mask, weight in zip(inpaintings, masks, weights):
        if weight == 0:
            continue
        target = image if inpainting.shape[2:] == image.shape[2:] else \
            F.interpolate(image, size=inpainting.shape[2:], mode=mode, align_corners=True)
        loss = loss + weight * masked_l1(inpainting, target, mask)
    return loss
