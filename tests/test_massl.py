"""MASSL's parts on tiny tensors: the attention reconstruction loss against values worked out by hand, the attention
maps, and the reconstruction decoder on nnU-Net's encoders (2d, 3d, several input channels)."""
import pytest
import torch

from nnunet_semi.losses.reconstruction import attention_maps, attention_reconstruction_loss, label_maps
from nnunet_semi.networks.reconstruction import ReconstructionDecoder


def test_attention_reconstruction_loss_by_hand():
    image = torch.tensor([2.0, 4.0]).reshape(1, 1, 2)
    p_fg = torch.tensor([1.0, 0.5])
    maps = torch.stack((1 - p_fg, p_fg))[None]  # (1, K=2, 2): background (0, 0.5), foreground (1, 0.5)
    # targets: background (0, 2), foreground (2, 2); weights: mean size 0.25 and 0.75
    reconstruction = torch.tensor([[0.0, 0.0], [2.0, 2.0]])[None]
    # background MSE ((0-0)^2 + (0-2)^2) / 2 = 2, foreground MSE 0  ->  0.25 * 2 + 0.75 * 0
    assert attention_reconstruction_loss(reconstruction, image, maps).item() == pytest.approx(0.5)
    reconstruction = torch.tensor([[0.0, 2.0], [0.0, 0.0]])[None]
    # background 0, foreground ((0-2)^2 + (0-2)^2) / 2 = 4  ->  0.75 * 4
    assert attention_reconstruction_loss(reconstruction, image, maps).item() == pytest.approx(3.0)


def test_a_class_of_zero_size_weighs_nothing_and_the_maps_get_gradients():
    image = torch.tensor([1.0, 3.0]).reshape(1, 1, 2)
    maps = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])[None].requires_grad_()  # class 2 is absent
    reconstruction = torch.tensor([[1.0, 0.0], [0.0, 3.0], [100.0, -100.0]])[None].requires_grad_()
    loss = attention_reconstruction_loss(reconstruction, image, maps)
    assert loss.item() == 0.0  # classes 0 and 1 reconstructed exactly, class 2's huge error has weight 0
    loss.backward()
    assert torch.isfinite(maps.grad).all() and torch.isfinite(reconstruction.grad).all()
    # not detached: the maps (the segmentation) get a gradient through the weights
    assert maps.grad[0, 2].abs().sum() > 0


def test_several_input_channels_are_reconstructed_map_major():
    image = torch.tensor([[1.0], [10.0]])[None]  # (1, C=2, 1)
    maps = torch.tensor([[0.25], [0.75]])[None]  # (1, K=2, 1)
    # outputs in the order (map 0: ch 0, ch 1), (map 1: ch 0, ch 1) = targets 0.25, 2.5, 0.75, 7.5
    exact = torch.tensor([0.25, 2.5, 0.75, 7.5]).reshape(1, 4, 1)
    assert attention_reconstruction_loss(exact, image, maps).item() == pytest.approx(0.0)
    swapped = exact[:, [2, 3, 0, 1]]
    # each map's MSE over its 2 channels: map 0 ((0.75-0.25)^2 + (7.5-2.5)^2)/2, the same for map 1
    per_map = (0.5 ** 2 + 5.0 ** 2) / 2
    assert attention_reconstruction_loss(swapped, image, maps).item() == pytest.approx(0.25 * per_map + 0.75 * per_map)
    with pytest.raises(ValueError, match='does not match'):
        attention_reconstruction_loss(exact[:, :3], image, maps)


def test_no_attention_is_the_plain_mse():
    torch.manual_seed(0)
    image, reconstruction = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    ones = torch.ones(2, 1, 3, 4)
    assert attention_reconstruction_loss(reconstruction, image, ones).item() == pytest.approx(
        torch.mean((reconstruction - image) ** 2).item())


def test_attention_maps_softmax_regions_and_labels():
    logits = torch.tensor([0.0, 0.0, 2.0]).log_softmax(0).reshape(1, 3, 1)
    assert attention_maps(logits)[0, :, 0].tolist() == pytest.approx(torch.softmax(logits, 1)[0, :, 0].tolist())
    region = torch.tensor([0.0]).reshape(1, 1, 1)  # one region, sigmoid 0.5: the paper's (1 - y_hat, y_hat)
    assert attention_maps(region, regions=True)[0, :, 0].tolist() == pytest.approx([0.5, 0.5])
    two = torch.tensor([0.0, 100.0]).reshape(1, 2, 1)  # background is 1 - the largest region
    assert attention_maps(two, regions=True)[0, :, 0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    labels = torch.tensor([[0, 2, 1]]).reshape(1, 1, 3)
    assert label_maps(labels, 3)[0].tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize('conv, patch', [(torch.nn.Conv2d, (16, 24)), (torch.nn.Conv3d, (8, 16, 16))])
def test_reconstruction_decoder_mirrors_the_planned_decoder_without_skips(conv, patch):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    dim = len(patch)
    strides = [[1] * dim, [2] * dim, [2] * dim, [1] + [2] * (dim - 1)]
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    unet = PlainConvUNet(2, 4, (4, 8, 16, 16), conv, 3, strides, 2, 3, 2, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={'affine': True}, nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    decoder = ReconstructionDecoder(unet.encoder, out_channels=3 * 2, n_conv_per_stage=2)
    x = torch.randn(2, 2, *patch)
    bottleneck = unet.encoder(x)[-1]
    assert decoder(bottleneck).shape == (2, 6, *patch)  # 3 maps x 2 input channels, full resolution
    # the same stages as the segmentation decoder, but each sees only the stage below (half the input channels)
    assert len(decoder.stages) == len(unet.decoder.stages) == 3
    for ours, planned in zip(decoder.stages, unet.decoder.stages):
        assert ours.convs[0].conv.in_channels * 2 == planned.convs[0].conv.in_channels
        assert len(ours.convs) == len(planned.convs)
