"""MASSL's attention-based reconstruction loss (Chen et al., MICCAI 2019), generalised to several classes and input
channels.

The soft segmentation splits the image into one attended image per class, t_k = p_k * x; the reconstruction decoder
reconstructs each, and each class weighs by its predicted size:

    L_R = sum_k w_k * MSE(r_k, t_k),   w_k = mean(p_k)

For a binary task, (p_0, p_1) = (1 - y_hat, y_hat), this is the paper's w_b MSE(r_b, t_b) + w_f MSE(r_f, t_f).
"""
import torch

from nnunet_semi.losses.consistency import probabilities


def attention_maps(logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """The maps that split an image, from segmentation logits (B, C, *spatial): softmax over the classes (B, C, ...);
    for nnU-Net's overlapping regions, the background 1 - max_r sigmoid_r followed by each region's sigmoid
    (B, C + 1, ...), which for one region is the paper's (1 - y_hat, y_hat)."""
    p = probabilities(logits.float(), regions)
    return torch.cat((1 - p.amax(1, keepdim=True), p), 1) if regions else p


def label_maps(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot maps (B, num_classes, *spatial) of a label map (B, 1, *spatial) of integer classes."""
    return torch.nn.functional.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()


def attention_reconstruction_loss(reconstruction: torch.Tensor, image: torch.Tensor,
                                  attention: torch.Tensor) -> torch.Tensor:
    """sum_k mean(a_k) * mean((r_k - a_k x)^2).

    reconstruction: (B, K * C, *spatial), for each of the K maps the C input channels (map-major);
    image: (B, C, *spatial); attention: (B, K, *spatial). Returns a scalar. Nothing is detached: as in the authors'
    code, gradients reach the maps (the segmentation) through both the targets and the weights. A map of zero size
    has weight 0 and contributes 0. With K = 1 and a map of ones this is the plain MSE(r, x) (no attention)."""
    b, c = image.shape[:2]
    k = attention.shape[1]
    if reconstruction.shape[1] != k * c or reconstruction.shape[2:] != image.shape[2:]:
        raise ValueError(f'reconstruction {tuple(reconstruction.shape)} does not match {k} maps x image '
                         f'{tuple(image.shape)}')
    r = reconstruction.float().reshape(b, k, c, *image.shape[2:])
    targets = attention.float()[:, :, None] * image.float()[:, None]  # (B, K, C, *spatial)
    mse = ((r - targets) ** 2).transpose(0, 1).reshape(k, -1).mean(1)  # (K,)
    weights = attention.float().transpose(0, 1).reshape(k, -1).mean(1)  # (K,)
    return (weights * mse).sum()
