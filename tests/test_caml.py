"""CAML's parts on tiny tensors: losses against values worked out by hand, CMA's mixing, the auxiliary network, the
memory bank, and the trainer's memory update on the tiny dataset's plans."""
import math

import pytest
import torch

from nnunet_semi.losses.mutual import correlation, mutual_consistency, omni_correlation_loss, sharpen
from nnunet_semi.networks.caml import CrossSampleMutualAttention, choose_cma_stage, make_auxiliary_network
from nnunet_semi.networks.parts import output_of
from nnunet_semi.networks.memory_bank import LabeledEmbeddingBank


def two_class_logits(*p_foreground):
    """Logits (1, 2, N) whose softmax is (1 - p, p) at each of the N voxels."""
    p = torch.tensor(p_foreground, dtype=torch.float64)
    return torch.stack((torch.log(1 - p), torch.log(p)))[None]


def test_sharpen_is_the_authors_binary_formula_and_its_multiclass_generalisation():
    # p = 0.6, T = 0.5: 0.6^2 / (0.6^2 + 0.4^2) = 0.36 / 0.52
    s = sharpen(two_class_logits(0.6), 0.5)
    assert s[0, 1, 0].item() == pytest.approx(0.36 / 0.52, abs=1e-6)
    # three classes (0.5, 0.3, 0.2), T = 0.5: squares 0.25, 0.09, 0.04 over 0.38
    s = sharpen(torch.log(torch.tensor([0.5, 0.3, 0.2]))[None, :, None], 0.5)[0, :, 0]
    assert s.tolist() == pytest.approx([0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38], abs=1e-6)
    # T = 0.1 makes a 0.6 voxel almost certain: 0.6^10 / (0.6^10 + 0.4^10)
    assert sharpen(two_class_logits(0.6), 0.1)[0, 1, 0].item() == pytest.approx(0.6 ** 10 / (0.6 ** 10 + 0.4 ** 10))


def test_mutual_consistency_by_hand_and_gradients_through_the_targets():
    a = two_class_logits(0.6).float().requires_grad_()
    b = two_class_logits(0.5).float().requires_grad_()
    # sharpen(b) = (0.5, 0.5): MSE(p_a, s_b) = 0.1^2; sharpen(a) = (0.2/0.52, 0.36/0.52): MSE(p_b, s_a) = (0.36/0.52 - 0.5)^2
    loss = mutual_consistency(a, b, temperature=0.5)
    assert loss.item() == pytest.approx(0.01 + (0.36 / 0.52 - 0.5) ** 2, abs=1e-6)
    grad_b, = torch.autograd.grad(loss, b)
    detached = mutual_consistency(a, b, temperature=0.5, detach_targets=True)
    grad_b_detached, = torch.autograd.grad(detached, b)
    assert detached.item() == pytest.approx(loss.item())
    assert not torch.allclose(grad_b, grad_b_detached)  # the authors' version also trains through sharpen(p_b)
    with pytest.raises(ValueError, match='shape mismatch'):
        mutual_consistency(a, torch.zeros(1, 2, 2))


def test_omni_correlation_loss_by_hand():
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_a, z_v = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # temperature 1: corr_A = softmax(1, 0) = (s, 1 - s), corr_V = (1 - s, s), s = e / (e + 1)
    s = math.e / (math.e + 1)
    expected = -(s * math.log(1 - s) + (1 - s) * math.log(s))
    assert omni_correlation_loss(z_a, z_v, memory, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # identical embeddings: the entropy of the correlation; temperature 0.1 with a raw dot product (not cosine)
    corr = correlation(torch.tensor([[0.2, 0.0]]), memory, temperature=0.1)
    assert corr[0].tolist() == pytest.approx([math.e ** 2 / (math.e ** 2 + 1), 1 / (math.e ** 2 + 1)], abs=1e-6)
    scaled = correlation(torch.tensor([[3.0, 0.0]]), memory, temperature=0.1, normalize=True)
    assert scaled[0].tolist() == pytest.approx(correlation(torch.tensor([[1.0, 0.0]]), memory, 0.1)[0].tolist())


def test_cma_mixes_samples_in_training_only():
    torch.manual_seed(0)
    cma = CrossSampleMutualAttention(8)
    x = torch.randn(3, 8, 2, 3, 2)
    y = x.clone()
    y[2] += 1.0  # change only the third sample

    def forward(inp):
        torch.manual_seed(1)  # the same dropout masks for both inputs
        return cma(inp)

    cma.train()
    out_x, out_y = forward(x), forward(y)
    assert out_x.shape == x.shape
    assert not torch.allclose(out_x[0], out_y[0])  # sample 0 attended to sample 2
    cma.eval()
    assert torch.equal(cma(x), x) and torch.equal(cma(y)[0], x[0])


def test_cma_stage_rule():
    strides_3d = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    # tokens per stage: 24*32*32, 12*16*16 = 3072, 6*8*8 = 384, 6*4*4 = 96
    assert choose_cma_stage((24, 32, 32), strides_3d) == 2
    assert choose_cma_stage((24, 32, 32), strides_3d, max_tokens=4096) == 1
    assert choose_cma_stage((24, 32, 32), strides_3d, max_tokens=10) == 3  # none small enough: the bottleneck
    assert choose_cma_stage((56, 40), [[1, 1], [2, 2], [2, 2], [2, 2]]) == 1  # 28*20 = 560; never stage 0


def _unet(deep_supervision=True):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(1, 4, (4, 8, 16, 16), torch.nn.Conv3d, 3, ((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)), 2, 3,
                         2, conv_bias=True, norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={'affine': True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=deep_supervision)


def test_auxiliary_network_keeps_the_outputs_and_swaps_the_upsampling():
    torch.manual_seed(0)
    stock, aux = _unet(), make_auxiliary_network(_unet(), cma_stage=2)
    x = torch.randn(2, 1, 8, 16, 16)
    shapes = [o.shape for o in stock(x)]
    assert [o.shape for o in aux(x)] == shapes and len(shapes) == 3
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in aux.modules())
    assert isinstance(aux.encoder.stages[2][1], CrossSampleMutualAttention)
    with output_of(aux.decoder.stages[-1]) as features:
        out = aux(x)
    assert features.value.shape == (2, 4, 8, 16, 16)
    assert torch.allclose(aux.decoder.seg_layers[-1](features.value), out[0])
    assert not aux.decoder.stages[-1]._forward_hooks  # the hook is gone afterwards


def test_memory_bank_slots_cap_and_sampling():
    bank = LabeledEmbeddingBank(num_classes=2, cases=['c', 'a', 'b'], dim=2, cap_per_class=12)
    assert bank.per_case == 4 and bank.embeddings.shape == (2, 3, 4, 2)
    bank.write('a', 1, torch.ones(10, 2))  # more than the slot holds: a random 4 of them
    bank.write('b', 1, torch.full((2, 2), 2.0))
    assert bank.size(1) == 6 and bank.size(0) == 0 and bank.count(1, 'a') == 4 and bank.count(1, 'c') == 0
    assert bank.counts[1].tolist() == [4, 2, 0]  # slots in sorted order of the keys
    assert bank.sample(1, 7) is None and bank.sample(0, 1) is None
    drawn = bank.sample(1, 6)
    assert sorted(drawn[:, 0].tolist()) == [1, 1, 1, 1, 2, 2]  # only stored rows, never the zero padding
    bank.write('a', 1, torch.full((1, 2), 3.0))  # the case's slot is overwritten, not appended to
    assert bank.size(1) == 3 and sorted(bank.sample(1, 3)[:, 0].tolist()) == [2, 2, 3]
    # a batch's positions by case, in order of first appearance; a case without a slot is named
    assert bank.samples_by_case(['c', 'a', 'c']) == {'c': [0, 2], 'a': [1]}
    with pytest.raises(RuntimeError, match='labeled case d is not in the training split'):
        bank.samples_by_case(['a', 'd'])
    copy = LabeledEmbeddingBank(2, ['a', 'b', 'c'], 2, 12)
    copy.load_state_dict(bank.state_dict())
    assert torch.equal(copy.embeddings, bank.embeddings) and torch.equal(copy.counts, bank.counts)
