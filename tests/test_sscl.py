"""SSCL's parts on tiny tensors: gated feature fusion with its gates forced open and shut, the masked L1 (empty mask:
0 with a finite gradient), the foreground rule, and the two-pass network's outputs against stock nnU-Net's in 2d and
3d with several input channels."""
import pytest
import torch

from conftest import predict_one_class
from nnunet_semi.losses.inpainting import inpainting_loss, masked_l1
from nnunet_semi.networks.sscl import GatedFeatureFusion, SSCLNetwork, foreground

BIG = 50.0  # a bias that saturates a sigmoid gate: sigmoid(50) = 1, sigmoid(-50) = 0 in float32


def _gff(select: float, reset: float):
    """A 1-channel 2d GFF whose gates are constant (zero weights, saturating biases) and whose candidate convolution
    reads the centre of its second input channel (the reset-gated e_inp) with weight 2 and its first (e_seg) with 3."""
    gff = GatedFeatureFusion(torch.nn.Conv2d, 1)
    with torch.no_grad():
        for conv, bias in ((gff.select_gate, select), (gff.reset_gate, reset)):
            conv.weight.zero_()
            conv.bias.fill_(bias)
        gff.candidate.weight.zero_()
        gff.candidate.weight[0, 0, 1, 1] = 3.0
        gff.candidate.weight[0, 1, 1, 1] = 2.0
        gff.candidate.bias.zero_()
    return gff


def test_gff_with_gates_forced_gives_the_values_by_hand():
    e_seg = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).reshape(1, 1, 2, 2)
    e_inp = torch.tensor([[4.0, 1.0], [-1.0, -5.0]]).reshape(1, 1, 2, 2)
    # select shut (s = 0): e = e_seg, whatever the rest
    assert torch.allclose(_gff(-BIG, BIG)(e_seg, e_inp), e_seg)
    # select open, reset open (r = 1): e = ReLU(3 e_seg + 2 e_inp)
    expected = torch.tensor([[11.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)  # 3+8, -6+2, 1.5-2, 9-10
    assert torch.allclose(_gff(BIG, BIG)(e_seg, e_inp), expected)
    # select open, reset shut (r = 0): e_inp is ignored, e = ReLU(3 e_seg)
    expected = torch.tensor([[3.0, 0.0], [1.5, 9.0]]).reshape(1, 1, 2, 2)
    assert torch.allclose(_gff(BIG, -BIG)(e_seg, e_inp), expected)
    # the authors' initialisation: orthogonal weights, zero biases
    fresh = GatedFeatureFusion(torch.nn.Conv3d, 4)
    w = fresh.select_gate.weight.reshape(4, -1)
    assert torch.allclose(w @ w.t(), torch.eye(4), atol=1e-5) and fresh.select_gate.bias.abs().sum() == 0


def test_masked_l1_by_hand_and_empty_mask():
    prediction = torch.tensor([1.0, 5.0, -2.0, 0.0]).reshape(1, 1, 4).requires_grad_()
    target = torch.tensor([0.0, 1.0, 0.0, 9.0]).reshape(1, 1, 4)
    mask = torch.tensor([True, True, False, False]).reshape(1, 1, 4)
    assert masked_l1(prediction, target, mask).item() == pytest.approx((1 + 4) / 2)  # only inside the mask
    empty = masked_l1(prediction, target, torch.zeros_like(mask))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(prediction.grad).all()
    # two channels: the mean is over masked voxels and channels
    two = torch.stack((prediction.detach()[:, 0], prediction.detach()[:, 0] + 1), 1)
    assert masked_l1(two, torch.zeros_like(two), mask).item() == pytest.approx((1 + 5 + 2 + 6) / 4)


def test_inpainting_loss_over_scales():
    image = torch.ones(1, 1, 4, 4)
    full, half = torch.full((1, 1, 4, 4), 3.0), torch.zeros(1, 1, 2, 2)
    masks = [torch.ones(1, 1, 4, 4, dtype=torch.bool), torch.ones(1, 1, 2, 2, dtype=torch.bool)]
    # full: |3 - 1| = 2; half: the image resized to 2x2 is 1, |0 - 1| = 1  ->  0.75 * 2 + 0.25 * 1
    assert inpainting_loss([full, half], image, masks, [0.75, 0.25]).item() == pytest.approx(1.75)


def test_foreground_is_the_union_of_foreground_classes_or_regions():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]]).t().reshape(1, 3, 3)  # argmax 0, 1, 2
    assert foreground(logits, torch.tensor(False)).flatten().tolist() == [False, True, True]
    regions = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -2.0, 0.5]]).reshape(1, 2, 3)  # sigmoid > 0.5 anywhere
    assert foreground(regions, torch.tensor(True)).flatten().tolist() == [False, True, True]


def _unet(conv, dim, deep_supervision=True, in_channels=2):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    strides = [[1] * dim, [2] * dim, [2] * dim, [1] + [2] * (dim - 1)]
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    return PlainConvUNet(in_channels, 4, (4, 8, 16, 16), conv, 3, strides, 2, 3, 2, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={'affine': True}, nonlin=torch.nn.LeakyReLU, deep_supervision=deep_supervision)


@pytest.mark.parametrize('conv, patch', [(torch.nn.Conv2d, (16, 24)), (torch.nn.Conv3d, (8, 16, 16))])
def test_two_pass_network_outputs_like_stock_nnunet(conv, patch):
    torch.manual_seed(0)
    x = torch.randn(2, 2, *patch)  # two input channels
    stock, sscl = _unet(conv, len(patch)), SSCLNetwork(_unet(conv, len(patch)), num_input_channels=2)
    assert [o.shape for o in sscl(x)] == [o.shape for o in stock(x)]
    segmentation, fused = sscl.segment(x)
    inpaintings = sscl.inpaint(fused)
    assert [i.shape[1] for i in inpaintings] == [2] * 3  # one output per input channel, every scale
    assert [i.shape[2:] for i in inpaintings] == [s.shape[2:] for s in segmentation]
    assert len(fused) == 4  # every skip level and the bottleneck
    sscl.decoder.deep_supervision = stock.decoder.deep_supervision = False  # as nnU-Net's predictor sets it
    assert sscl(x).shape == stock(x).shape == (2, 3, *patch)
    # the state dict round-trips strictly into a fresh model, as nnU-Net's predictor loads it
    fresh = SSCLNetwork(_unet(conv, len(patch), deep_supervision=False), num_input_channels=2)
    fresh.load_state_dict(sscl.state_dict())
    sscl.eval(), fresh.eval()
    assert torch.equal(fresh(x), sscl(x))


def test_pass_two_sees_the_blanked_image():
    torch.manual_seed(0)
    sscl = SSCLNetwork(_unet(torch.nn.Conv2d, 2, in_channels=1), num_input_channels=1)
    seen = []
    sscl.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    predict_one_class(sscl, 2)  # every voxel's coarse (pass-1) prediction foreground
    x = torch.randn(1, 1, 16, 16)
    sscl(x)
    assert len(seen) == 2 and torch.equal(seen[0], x) and torch.count_nonzero(seen[1]) == 0


def test_without_full_resolution_fusion_each_decoder_reads_its_own_image_there():
    torch.manual_seed(0)
    sscl = SSCLNetwork(_unet(torch.nn.Conv2d, 2, in_channels=1), num_input_channels=1, fuse_full_resolution=False)
    assert len(sscl.fusions) == 3  # the two lower skips and the bottleneck
    predict_one_class(sscl, 2)  # every voxel's coarse prediction foreground: the blanked image is all 0
    decoded = []
    sscl.decoder.register_forward_pre_hook(lambda module, args: decoded.append(args[0]))
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        _, features = sscl.segment(x)
        image, blanked = sscl.encoder(x), sscl.encoder(torch.zeros_like(x))
        assert len(decoded) == 2 and len(features) == 4  # pass 1 and pass 2; every level
        assert torch.equal(decoded[1][0], image[0])  # D_S: the image's full-resolution features
        assert torch.equal(features[0], blanked[0])  # D_I: the blanked image's
        for level in (1, 2, 3):  # fused below full resolution, the same features for both decoders
            assert torch.equal(decoded[1][level], features[level])
            assert torch.equal(features[level], sscl.fusions[level - 1](image[level], blanked[level]))
