"""CAML's losses: mutual consistency with sharpened soft targets, and the omni-correlation consistency."""
import torch


def sharpen(logits: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Sharpened class probabilities from logits (B, C, *spatial): p_c^(1/T) / sum_k p_k^(1/T) with p = softmax(logits),
    which equals softmax(logits / T) (computed so, for stability). For two classes this is the authors'
    P^(1/T) / (P^(1/T) + (1-P)^(1/T))."""
    return torch.softmax(logits.float() / temperature, 1)


def mutual_consistency(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float = 0.1,
                       detach_targets: bool = False) -> torch.Tensor:
    """MSE(p_a, sharpen(p_b)) + MSE(p_b, sharpen(p_a)) over every element (all samples, all channels).

    logits_a, logits_b: (B, C, *spatial), the two networks' outputs for the same batch. As in the authors' code the
    sharpened targets are not detached (gradients reach both sides of each term); ``detach_targets=True`` gives the
    stop-gradient reading."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f'shape mismatch: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}')
    p_a, p_b = torch.softmax(logits_a.float(), 1), torch.softmax(logits_b.float(), 1)
    s_a, s_b = sharpen(logits_a, temperature), sharpen(logits_b, temperature)
    if detach_targets:
        s_a, s_b = s_a.detach(), s_b.detach()
    return torch.mean((p_a - s_b) ** 2) + torch.mean((p_b - s_a) ** 2)


def correlation(embeddings: torch.Tensor, memory: torch.Tensor, temperature: float = 0.1,
                normalize: bool = False) -> torch.Tensor:
    """Each voxel's correlation with every memory entry: softmax_k(z . m_k / T).

    embeddings: (N, D); memory: (K, D); returns (N, K), rows summing to 1. The authors' code uses the raw dot product;
    ``normalize=True`` L2-normalises both sides first (cosine similarity, the paper's wording)."""
    if normalize:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
        memory = torch.nn.functional.normalize(memory, dim=1)
    return torch.softmax(embeddings.float() @ memory.float().t() / temperature, dim=1)


def omni_correlation_loss(embeddings_target: torch.Tensor, embeddings_pred: torch.Tensor, memory: torch.Tensor,
                          temperature: float = 0.1, normalize: bool = False, eps: float = 1e-8) -> torch.Tensor:
    """(1/N) sum_u sum_k -corr_target(u, k) log(corr_pred(u, k) + eps): the cross-entropy between the correlation maps
    of the same N voxels embedded by two networks (target: model A, prediction: model V in CAML), against the same
    memory (K, D). Not detached, as in the authors' code. embeddings_*: (N, D). Returns a scalar."""
    corr_target = correlation(embeddings_target, memory, temperature, normalize)
    corr_pred = correlation(embeddings_pred, memory, temperature, normalize)
    return -(corr_target * torch.log(corr_pred + eps)).sum(1).mean()
