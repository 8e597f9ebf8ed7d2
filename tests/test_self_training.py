"""Weak-to-strong self-training parts on tiny tensors: strong views, CutMix and copy-paste boxes, the masked
pseudo-label loss, BCP's mixing both ways and its largest-component pseudo-labels."""
import pytest
import torch

from nnunet_semi.data.strong_views import (FeatureDropout, copy_paste_box, cutmix_boxes, gaussian_blur,
                                           intensity_view, mix)
from nnunet_semi.losses.pseudo_label import (class_balance_weights, largest_component, masked_pseudo_label_loss,
                                             pseudo_labels)
from nnunet_semi.trainers.bcp import copy_paste_both_ways


def test_a_cutmix_box_mixes_image_target_and_confidence_alike():
    torch.manual_seed(0)
    boxes = cutmix_boxes(4, (10, 12), area=(0.2, 0.2))
    assert boxes.shape == (4, 10, 12) and boxes.dtype == torch.bool
    for box in boxes:  # one axis-aligned box of about a fifth of the patch
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and box.sum() == len(rows) * len(cols)
        assert 0.1 <= box.float().mean() <= 0.3
    image_a, image_b = torch.zeros(4, 1, 10, 12), torch.ones(4, 1, 10, 12)
    labels_a, labels_b = torch.zeros(4, 10, 12, dtype=torch.long), torch.full((4, 10, 12), 2)
    mixed_image, mixed_labels = mix(image_a, image_b, boxes), mix(labels_a, labels_b, boxes)
    assert torch.equal(mixed_image[:, 0] == 1, boxes) and torch.equal(mixed_labels == 2, boxes)
    # at half resolution (a deep-supervision scale) the box is the mask downsampled nearest-exact
    half = mix(torch.zeros(4, 3, 5, 6), torch.ones(4, 3, 5, 6), boxes)
    expected = torch.nn.functional.interpolate(boxes[:, None].float(), size=[5, 6], mode='nearest-exact')
    assert torch.equal(half, expected.expand(-1, 3, -1, -1))
    assert not cutmix_boxes(3, (4, 5, 6), p=0.0).any()
    assert cutmix_boxes(2, (8, 8, 8), area=(0.4, 0.4)).float().mean() == pytest.approx(0.4, abs=0.15)


def test_blur_and_intensity_view():
    x = torch.zeros(2, 1, 9, 9)
    x[:, :, 4, 4] = 1
    blurred = gaussian_blur(x, torch.tensor([1.0, 0.5]))
    g = torch.exp(-torch.arange(-3., 4.) ** 2 / 2)
    g = g / g.sum()  # sigma 1, radius 3: the separable kernel's centre and neighbour
    assert blurred[0, 0, 4, 4] == pytest.approx(float(g[3] ** 2), rel=1e-4)
    assert blurred[0, 0, 4, 3] == pytest.approx(float(g[3] * g[2]), rel=1e-4)
    assert blurred.sum((1, 2, 3)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)  # mass kept
    assert gaussian_blur(torch.randn(2, 3, 5, 6, 7), torch.tensor([0.7, 1.2])).shape == (2, 3, 5, 6, 7)
    torch.manual_seed(0)
    images = torch.randn(16, 1, 20, 20)
    view = intensity_view(images)
    assert view.shape == images.shape and torch.isfinite(view).all()
    assert not torch.equal(view, images)
    assert torch.equal(intensity_view(images, p=0.0, p_blur=0.0), images)  # nothing drawn: the images themselves


def test_without_intensity_transforms_keeps_the_rest_in_order():
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from nnunet_semi.data.augmenter import without_intensity_transforms
    mirror, remove = MirrorTransform(allowed_axes=(0, 1)), RemoveLabelTansform(-1, 0)
    noise = RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.1)), apply_probability=1)
    gamma = GammaTransform(gamma=(0.7, 1.5), p_invert_image=0, synchronize_channels=False, p_per_channel=1,
                           p_retain_stats=1)  # bare, without a RandomTransform around it
    kept = without_intensity_transforms(ComposeTransforms([noise, mirror, gamma, remove])).transforms
    assert kept == [mirror, remove]
    image = torch.rand(1, 8, 8)
    out = ComposeTransforms(kept)(image=image.clone(), segmentation=torch.zeros(1, 8, 8, dtype=torch.int16))
    assert sorted(out['image'].flatten().tolist()) == sorted(image.flatten().tolist())  # values moved, none changed


def test_feature_dropout_drops_whole_channels():
    torch.manual_seed(0)
    features = [torch.ones(2, 8, 4, 4), torch.ones(2, 16, 2, 2, 2)]
    dropped = FeatureDropout(0.5)(features)
    for f in dropped:
        per_channel = f.flatten(2)
        assert ((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all()  # 0 or scaled by 1 / (1 - p)


def _logits(p_class1):
    """Two-class logits (1, 2, N) with softmax probability p of class 1 at each voxel."""
    p = torch.tensor(p_class1)
    return torch.stack((torch.log(1 - p), torch.log(p)))[None]


def test_pseudo_labels_and_their_mask():
    labels, confidence, mask = pseudo_labels(_logits([0.99, 0.6, 0.02]), False, 0.95)
    assert labels.tolist() == [[1, 1, 0]] and mask.tolist() == [[True, False, True]]
    assert confidence[0].tolist() == pytest.approx([0.99, 0.6, 0.98])
    per_class = pseudo_labels(_logits([0.99, 0.6, 0.02]), False, torch.tensor([0.99, 0.5]))[2]
    assert per_class.tolist() == [[True, True, False]]  # a threshold per predicted class
    labels, confidence, mask = pseudo_labels(torch.tensor([[[3.0, -0.1]]]), True, 0.9)  # regions: sigmoid
    assert labels.tolist() == [[[1.0, 0.0]]] and mask.tolist() == [[[True, False]]]


def test_masked_loss_ignores_unconfident_voxels_and_is_zero_without_any():
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[0.0, 1.0, -0.5]]]).permute(1, 0, 2).clone().requires_grad_()
    labels = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[True, True, False]])
    loss = masked_pseudo_label_loss(logits, labels, mask)
    by_hand = (torch.nn.functional.cross_entropy(logits[0, :, :2].T, labels[0, :2], reduction='sum') / 2)
    assert loss.item() == pytest.approx(by_hand.item())
    changed = labels.clone()
    changed[0, 2] = 0  # an unconfident voxel's pseudo-label changes nothing
    assert masked_pseudo_label_loss(logits, changed, mask).item() == loss.item()
    none = masked_pseudo_label_loss(logits, labels, torch.zeros_like(mask))
    assert none.item() == 0.0 and torch.isfinite(none)
    none.backward()  # still part of the graph
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_loss_on_deep_supervision_scales_as_nnunet_downsamples():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    mask = torch.rand(2, 8, 8) > 0.3
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    targets = DownsampleSegForDSTransform([[1, 1], [0.5, 0.5]])(segmentation=labels[:1])['segmentation']
    nnunet_half = targets[1]  # nnU-Net's downsampled target of the first sample
    half_mask = torch.nn.functional.interpolate(mask[:, None].float(), size=[4, 4], mode='nearest-exact')[:, 0] > 0.5
    ce = torch.nn.functional.cross_entropy
    expected_half = (ce(outputs[1], torch.cat((nnunet_half, _half(labels[1:]))).long(), reduction='none')
                     * half_mask).sum() / half_mask.sum()
    expected_full = (ce(outputs[0], labels, reduction='none') * mask).sum() / mask.sum()
    loss = masked_pseudo_label_loss(outputs, labels, mask, scale_weights=[0.75, 0.25])
    assert loss.item() == pytest.approx(0.75 * expected_full.item() + 0.25 * expected_half.item(), rel=1e-5)


def _half(labels):
    return torch.nn.functional.interpolate(labels[:, None].float(), size=[4, 4], mode='nearest-exact')[:, 0].long()


def test_class_balance_weights_by_hand():
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2]])
    mask = torch.tensor([[True] * 8 + [False]])  # class 2's only voxel is not confident
    w = class_balance_weights(labels, mask, 3)
    assert w.tolist() == pytest.approx([8 / (2 * 6), 8 / (2 * 2), 0.0])  # 6 and 2 confident voxels, 2 classes
    assert (w[labels[mask]]).sum().item() == pytest.approx(8.0)  # the weights sum to the confident voxels
    assert class_balance_weights(labels, torch.zeros_like(mask), 3).tolist() == [0.0, 0.0, 0.0]


def test_copy_paste_box_is_one_box_of_two_thirds_of_each_side():
    torch.manual_seed(0)
    box = copy_paste_box(3, (9, 12))
    assert box.shape == (3, 9, 12) and torch.equal(box[0], box[1]) and torch.equal(box[0], box[2])
    rows, cols = box[0].any(1).nonzero().flatten(), box[0].any(0).nonzero().flatten()
    assert (len(rows), len(cols)) == (6, 8) and box[0].sum() == 48
    assert copy_paste_box(2, (4, 5, 6)).sum() == 2 * 2 * 3 * 4  # int(2/3 * side) in 3d


def test_copy_paste_both_ways_by_hand():
    box = torch.zeros(4, 3, 3, dtype=torch.bool)
    box[:, 1:, 1:] = True
    labeled = (torch.ones(4, 1, 3, 3), torch.full((4, 3, 3), 1))  # images, labels
    unlabeled = (torch.zeros(4, 1, 3, 3), torch.full((4, 3, 3), 2))
    labeled[0][:, 0, 0, 0] = torch.arange(4) + 10.0  # tells the samples apart
    unlabeled[0][:, 0, 0, 0] = -torch.arange(4) - 10.0
    (x_in, y_in), (x_out, y_out), half_box = copy_paste_both_ways(labeled, unlabeled, box)
    assert x_in.shape == x_out.shape == (2, 1, 3, 3) and half_box.shape == (2, 3, 3)
    # in: unlabeled a (samples 0, 1) outside the box, labeled a inside; out: labeled b (2, 3) outside, unlabeled inside
    assert torch.equal(x_in[:, 0, 0, 0], torch.tensor([-10.0, -11.0])) and (x_in[:, 0, 1:, 1:] == 1).all()
    assert torch.equal(x_out[:, 0, 0, 0], torch.tensor([12.0, 13.0])) and (x_out[:, 0, 1:, 1:] == 0).all()
    assert torch.equal(y_in == 1, half_box) and torch.equal(y_out == 2, half_box)
    # one sample: the one pair is mixed both ways
    (x_in, _), (x_out, _), _ = copy_paste_both_ways(tuple(t[:1] for t in labeled), tuple(t[:1] for t in unlabeled), box)
    assert x_in[0, 0, 0, 0] == -10.0 and x_out[0, 0, 0, 0] == 10.0


def test_largest_component_keeps_each_class_biggest_blob():
    labels = torch.tensor([[[1, 1, 0, 1],
                            [1, 0, 0, 0],
                            [0, 2, 0, 2],
                            [0, 2, 0, 2]]])
    expected = torch.tensor([[[1, 1, 0, 0],
                              [1, 0, 0, 0],
                              [0, 2, 0, 0],
                              [0, 2, 0, 0]]])  # of two equal blobs the first is kept
    assert torch.equal(largest_component(labels, regions=False), expected)
    regions = torch.stack([labels == 1, labels > 0], 1).float()  # (B, R, ...): region 2 is every foreground voxel
    kept = largest_component(regions, regions=True)
    assert torch.equal(kept[:, 0], (expected == 1).float())
    assert torch.equal(kept[:, 1], (expected == 1).float())  # the foreground's biggest blob is class 1's (3 voxels)
