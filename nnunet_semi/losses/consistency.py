"""Consistency between two predictions of the same input."""
import torch


def probabilities(logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Class probabilities from logits of shape (B, C, *spatial): softmax over C, or an independent sigmoid per
    channel for nnU-Net's region-based training (overlapping regions)."""
    return torch.sigmoid(logits) if regions else torch.softmax(logits, 1)


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Mean squared difference of the two probability maps (Mean Teacher's consistency cost).

    Both inputs: logits (B, C, *spatial) of the same shape. Returns a scalar: the mean over every element of
    (p_student - p_teacher)^2. The teacher's side is detached: gradients reach the student only."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f'shape mismatch: student {tuple(student_logits.shape)}, teacher {tuple(teacher_logits.shape)}')
    p_s = probabilities(student_logits.float(), regions)
    p_t = probabilities(teacher_logits.detach().float(), regions)
    return torch.mean((p_s - p_t) ** 2)
