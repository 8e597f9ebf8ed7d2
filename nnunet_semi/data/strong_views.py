"""Strong views of a batch, made on the device in plain torch, 2d and 3d (weak-to-strong self-training: FixMatch,
UniMatch, BCP).

nnU-Net's loader already gives each unlabeled patch its weak view (nnU-Net's spatial and intensity augmentation).
A strong view perturbs that patch further; the network's prediction on the weak view, kept where it is confident,
supervises the strong one.

- ``intensity_view``: per-sample intensity perturbations that are safe on nnU-Net's normalised images (any scale,
  negative values): contrast about the sample's mean, an additive shift in units of the sample's std, gamma on a
  copy rescaled to [0, 1] and scaled back, Gaussian noise, Gaussian blur; each applied with its own probability.
- ``cutmix_boxes`` / ``mix``: one random box per sample (its volume a fraction of the patch) and the mixing of
  anything with the same box: images, pseudo-labels, confidences, deep-supervision targets at any scale.
- ``copy_paste_box``: bidirectional copy-paste's box (BCP), one per batch, a fixed share of each side.
- ``FeatureDropout``: channel dropout on encoder features (UniMatch's feature-perturbed stream).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(low: float, high: float, n: int, like: torch.Tensor, generator=None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, dtype=torch.float32, generator=generator)


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *spatial), 2d or 3d, with one sigma (in voxels) per sample: a kernel of
    radius 3 sigma along each axis in turn, replicate padding."""
    b, c, *spatial = x.shape
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    radius = max(1, int(3 * float(sigma.max()) + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernels = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].float().clamp_min(1e-3) ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x.dtype)  # (B*C, K)
    out = x.reshape(1, b * c, *spatial)
    for axis in range(len(spatial)):
        shape = [b * c, 1] + [1] * len(spatial)
        shape[2 + axis] = kernels.shape[1]
        pad = [0, 0] * len(spatial)
        pad[2 * (len(spatial) - 1 - axis):2 * (len(spatial) - axis)] = [radius, radius]
        out = conv(F.pad(out, pad, mode='replicate'), kernels.reshape(shape), groups=b * c)
    return out.reshape(x.shape)


def intensity_view(x: torch.Tensor, p: float = 0.8, contrast: Tuple[float, float] = (0.7, 1.3),
                   shift: Tuple[float, float] = (-0.3, 0.3), gamma: Tuple[float, float] = (0.7, 1.5),
                   noise_std: Tuple[float, float] = (0.0, 0.15), blur_sigma: Tuple[float, float] = (0.5, 1.0),
                   p_blur: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A strongly perturbed copy of ``x`` (B, C, *spatial), nnU-Net-normalised images. Each sample gets each of
    contrast, shift, gamma and noise with probability ``p`` and blur with ``p_blur``, with parameters drawn uniformly
    from the ranges (contrast: factor about the sample's mean; shift: in the sample's std; noise: std in the sample's
    std; blur: sigma in voxels)."""
    b = x.shape[0]
    dims = tuple(range(1, x.ndim))
    out = x.float()
    mean, std = out.mean(dims, keepdim=True), out.std(dims, keepdim=True).clamp_min(1e-6)

    def chosen(prob):  # (B, 1, ...) bool: the samples that get a perturbation
        return (torch.rand(b, device=x.device, generator=generator) < prob).view(-1, *([1] * (x.ndim - 1)))

    factor = _per_sample(_uniform(*contrast, b, x, generator), out)
    out = torch.where(chosen(p), (out - mean) * factor + mean, out)
    offset = _per_sample(_uniform(*shift, b, x, generator), out) * std
    out = torch.where(chosen(p), out + offset, out)
    low, high = out.amin(dims, keepdim=True), out.amax(dims, keepdim=True)
    span = (high - low).clamp_min(1e-6)
    g = _per_sample(_uniform(*gamma, b, x, generator), out)
    out = torch.where(chosen(p), ((out - low) / span).clamp(0, 1) ** g * span + low, out)
    sigma = _per_sample(_uniform(*noise_std, b, x, generator), out) * std
    noise = torch.randn(out.shape, device=x.device, generator=generator) * sigma
    out = torch.where(chosen(p), out + noise, out)
    blur = chosen(p_blur)
    if bool(blur.any()):
        out = torch.where(blur, gaussian_blur(out, _uniform(*blur_sigma, b, x, generator)), out)
    return out.to(x.dtype)


def cutmix_boxes(batch: int, spatial: Sequence[int], area: Tuple[float, float] = (0.02, 0.4), p: float = 1.0,
                 device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(batch, *spatial) bool: per sample, with probability ``p``, one axis-aligned box whose volume is a fraction
    of the patch drawn uniformly from ``area``, split into side fractions at random (each side's share of the log of
    that fraction drawn from [0.5, 1.5] and normalised), placed uniformly; else empty."""
    masks = torch.zeros((batch, *spatial), dtype=torch.bool, device=device)
    n = len(spatial)
    for i in range(batch):
        if float(torch.rand(1, generator=generator)) >= p:
            continue
        fraction = float(area[0] + (area[1] - area[0]) * torch.rand(1, generator=generator))
        # side fractions s_k with prod(s_k) = fraction: random log-weights, each s_k in (0, 1]
        weights = torch.rand(n, generator=generator) + 0.5
        sides = [min(1.0, fraction ** (float(w) / float(weights.sum()))) for w in weights]
        box = [max(1, int(round(s * size))) for s, size in zip(sides, spatial)]
        lows = [int(torch.randint(0, size - k + 1, (1,), generator=generator)) for k, size in zip(box, spatial)]
        masks[(i, *[slice(lo, lo + k) for lo, k in zip(lows, box)])] = True
    return masks


def copy_paste_box(batch: int, spatial: Sequence[int], side: float = 2 / 3, device=None,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(batch, *spatial) bool: BCP's box, one for the whole batch, each side ``side`` of the patch's (rounded down),
    placed uniformly."""
    box = [max(1, int(size * side)) for size in spatial]
    lows = [int(torch.randint(0, size - k + 1, (1,), generator=generator)) for k, size in zip(box, spatial)]
    mask = torch.zeros(tuple(spatial), dtype=torch.bool, device=device)
    mask[tuple(slice(lo, lo + k) for lo, k in zip(lows, box))] = True
    return mask.expand(batch, *spatial)


def resize_mask(mask: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """A (B, *spatial) mask at another resolution, by nnU-Net's rule for its deep-supervision targets
    (nearest-exact)."""
    if tuple(mask.shape[1:]) == tuple(spatial):
        return mask
    return F.interpolate(mask[:, None].float(), size=list(spatial), mode='nearest-exact')[:, 0] > 0.5


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``b`` inside the box ``mask`` (B, *spatial), ``a`` outside; a and b (B, [C,] *spatial') at any resolution (the
    mask follows it as nnU-Net downsamples its targets)."""
    spatial = a.shape[-(mask.ndim - 1):]
    m = resize_mask(mask, spatial)
    if a.ndim == m.ndim + 1:
        m = m[:, None]
    return torch.where(m, b, a)


class FeatureDropout(nn.Module):
    """Channel dropout (Dropout2d/3d) of a list of encoder feature maps: UniMatch's feature perturbation, p = 0.5."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, features):
        return [F.dropout2d(f, self.p, True) if f.ndim == 4 else F.dropout3d(f, self.p, True) for f in features]
