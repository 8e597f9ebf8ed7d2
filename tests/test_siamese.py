"""The siamese proxy task's parts on small tensors and synthetic volumes: the contrastive loss against values by hand,
the embedding, the left-right axis from image geometry, the proxy patch size, and the region patch sampler, which
must return the regions it claims and place patches at mirrored distances from the midline."""
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_semi.data.proxy import (HALVES, LEFT_RIGHT, OCTANTS, ProxyCases, RegionPatchLoader, RegionSplit,
                                    left_right_axis, proxy_patch_size)
from nnunet_semi.losses.siamese import siamese_contrastive_loss
from nnunet_semi.networks.siamese import BottleneckEmbedding

# d(e0, e1) = 1, d(e0, e2) = d(e1, e2) = 0.5
E = torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.3, 0.4]])


@pytest.mark.parametrize('regions, loss, accuracy', [
    # pairs (0,1) same: d^2 = 1; (0,2), (1,2) different: (1 - 0.5)^2 = 0.25 each. With d < 0.75 read as "same":
    # (0,1) is called different, (0,2) and (1,2) same: all three wrong
    ([0, 0, 1], (1 + 0.25 + 0.25) / 3, 0.0),
    # (0,1) different at d = m: 0; (0,2) different: 0.25; (1,2) same: 0.25. Right: (0,1) and (1,2)
    ([0, 1, 1], (0 + 0.25 + 0.25) / 3, 2 / 3),
    # all the same region: d^2 = 1, 0.25, 0.25; (0,2) and (1,2) called same
    ([1, 1, 1], (1 + 0.25 + 0.25) / 3, 2 / 3),
])
def test_contrastive_loss_by_hand(regions, loss, accuracy):
    value, acc = siamese_contrastive_loss(E, torch.tensor(regions), margin=1.0, same_distance=0.75)
    assert value.item() == pytest.approx(loss, abs=1e-6)
    assert acc.item() == pytest.approx(accuracy, abs=1e-6)


def test_contrastive_loss_margin_and_gradient_at_zero_distance():
    # two identical embeddings from different regions: (m - 0)^2 = 4 for m = 2, with a finite gradient
    e = torch.tensor([[0.5, 0.5], [0.5, 0.5]], requires_grad=True)
    value, _ = siamese_contrastive_loss(e, torch.tensor([0, 1]), margin=2.0)
    value.backward()
    assert value.item() == pytest.approx(4.0) and torch.isfinite(e.grad).all()
    with pytest.raises(ValueError, match='at least 2 samples'):
        siamese_contrastive_loss(e[:1], torch.tensor([0]))


def test_bottleneck_embedding_pooled_normalised_and_flat():
    class Encoder(nn.Module):  # returns its skips, as nnU-Net's encoders do
        def forward(self, x):
            return [x, x[:, :, ::2, ::2] * 3]

    x = torch.randn(4, 5, 8, 6)
    pooled = BottleneckEmbedding(Encoder())(x)
    assert pooled.shape == (4, 5) and torch.allclose(pooled.norm(dim=1), torch.ones(4))
    expected = x[:, :, ::2, ::2].mean(dim=(2, 3))
    assert torch.allclose(pooled, expected / expected.norm(dim=1, keepdim=True), atol=1e-6)
    flat = BottleneckEmbedding(Encoder(), pooled=False, normalize=False)(x)
    assert flat.shape == (4, 5 * 4 * 3) and torch.allclose(flat, 3 * x[:, :, ::2, ::2].flatten(1))


def test_left_right_axis_from_geometry():
    # MSD Hippocampus: SimpleITK direction diag(-1, -1, 1): the x index grows toward the patient's right (LPS x is
    # left); x is the last array axis
    hippocampus = {'sitk_stuff': {'direction': (-1, 0, 0, 0, -1, 0, 0, 0, 1)}}
    assert left_right_axis(hippocampus, [0, 1, 2]) == (2, -1)
    # physical x along index axis 2 (array axis 0); the plans move array axis 0 to preprocessed axis 1
    tilted = {'sitk_stuff': {'direction': (0, 0.1, 0.99, 1, 0, 0, 0, 1, 0)}}
    assert left_right_axis(tilted, [2, 0, 1]) == (1, 1)
    # nibabel: RAS affine, x grows toward the right; -1 on index axis 0 means the index grows toward the left
    assert left_right_axis({'nibabel_stuff': {'original_affine': np.diag([-1.0, 1, 1, 1])}}, [0, 1, 2]) == (2, 1)
    assert left_right_axis({'nibabel_stuff': {'original_affine': np.diag([-1.0, 1, 1, 1]),
                                              'reoriented_affine': np.diag([1.0, 1, 1, 1])}}, [0, 1, 2]) == (2, -1)
    assert left_right_axis({'sitk_stuff': {'direction': (1, 0, 0, 1)}}, [0, 1]) is None  # a 2d image


def test_proxy_patch_size():
    # Hippocampus 3d_fullres: half the median width 35 is 17, in multiples of the stride 8: 16
    assert proxy_patch_size([40, 56, 40], [2], [36, 50, 35], [8, 8, 8]) == [40, 56, 16]
    assert proxy_patch_size([56, 40], [2], [50, 35], [8, 8]) == [56, 16]  # 2d: volume axis 2 is patch axis 1
    assert proxy_patch_size([56, 40], [0], [50, 35], [8, 8]) == [56, 40]  # 2d split across slices: unchanged
    assert proxy_patch_size([16, 16, 16], [0, 1, 2], [100, 10, 20], [4, 4, 4]) == [16, 4, 8]  # at least one stride


class _Labels:
    def __init__(self):
        self.all_labels, self.has_ignore_label = [0, 1], False


def _cases(tmp_path, volumes: dict, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)) -> ProxyCases:
    for key, volume in volumes.items():
        np.save(tmp_path / f'{key}.npy', volume[None].astype(np.float32))
        with open(tmp_path / f'{key}.pkl', 'wb') as f:
            pickle.dump({'sitk_stuff': {'direction': direction}, 'class_locations': 'never read'}, f)
    return ProxyCases({k: str(tmp_path / k) for k in volumes})


def _signed_distance_volume(shape, axis):
    """Along ``axis``: -(distance to the midline + 1) in the lower half, +(...) in the upper half, 0 on the middle
    slice of an odd extent."""
    n = shape[axis]
    i = np.arange(n)
    values = np.where(i < n // 2, -(n // 2 - i), np.where(i >= n - n // 2, i - (n - n // 2) + 1, 0))
    view = [1] * len(shape)
    view[axis] = n
    return np.broadcast_to(values.reshape(view), shape).copy()


@pytest.mark.parametrize('patch, axis', [((4, 6, 3), 2), ((6, 3), 2), ((4, 6), 1)])
def test_sampler_regions_and_mirrored_positions(tmp_path, patch, axis):
    """Hippocampus geometry: the x index grows toward the patient's right, so the upper half along the left-right
    axis is region 0 (right) and the lower half region 1 (left). Every patch must lie entirely in the half of its
    region (never the middle slice, never padding), and the distances from the midline must be the same set on both
    sides. ``axis``: where the plans put x in the preprocessed volume (1: transpose_forward [0, 2, 1])."""
    volume = _signed_distance_volume((8, 10, 11), 2)  # odd extent 11 along x: the middle slice is in neither half
    transpose = [0, 1, 2] if axis == 2 else [0, 2, 1]
    volume = volume.transpose(transpose)
    cases = _cases(tmp_path, {'a': volume, 'b': volume})
    split = RegionSplit(LEFT_RIGHT, cases, transpose)
    assert split('a') == [(axis, False)]
    loader = RegionPatchLoader(cases, 16, patch, patch, _Labels(), split)
    distances = defaultdict(set)
    for _ in range(20):
        batch = loader.generate_train_batch()
        assert batch['data'].shape == (16, 1, *patch)
        for image, region in zip(batch['data'], batch['region'].tolist()):
            sign = -1 if region == 1 else 1  # region 1 (left) is the lower half
            assert (torch.sign(image) == sign).all(), 'a patch left the half of its region'
            distances[region].add(int(image.abs().min()) - 1)
    # a half of 5 voxels and a patch 3 (or 4) wide along x: every distance from the midline, on both sides
    width = patch[axis - (3 - len(patch))]
    assert distances[0] == distances[1] == set(range(5 - width + 1))


def test_sampler_octants_and_halves(tmp_path):
    shape = (8, 8, 8)
    code = sum(((np.indices(shape)[a] >= 4).astype(int) << a) for a in range(3))  # octant of each voxel
    cases = _cases(tmp_path, {'a': code})
    loader = RegionPatchLoader(cases, 32, (3, 3, 3), (3, 3, 3), _Labels(), RegionSplit(OCTANTS, cases, [0, 1, 2]))
    batch = loader.generate_train_batch()
    for image, region in zip(batch['data'], batch['region'].tolist()):
        assert (image == region).all()
    assert set(batch['region'].tolist()) <= set(range(8)) and len(set(batch['region'].tolist())) > 1

    split = RegionSplit(HALVES, cases, [0, 1, 2], axis=0)
    assert split('a') == [(0, True)]
    batch = RegionPatchLoader(cases, 16, (3, 8, 8), (3, 8, 8), _Labels(), split).generate_train_batch()
    for image, region in zip(batch['data'], batch['region'].tolist()):
        assert ((image.long() & 1) == region).all()  # bit 0 of the octant code: the half along axis 0


def test_sampler_octants_of_a_2d_image_are_quadrants(tmp_path):
    shape = (1, 8, 8)  # a 2d image as nnU-Net stores it: one slice
    code = sum(((np.indices(shape)[a] >= 4).astype(int) << a) for a in (1, 2))
    cases = _cases(tmp_path, {'a': code})
    split = RegionSplit(OCTANTS, cases, [0, 1, 2])
    batch = RegionPatchLoader(cases, 32, (3, 3), (3, 3), _Labels(), split).generate_train_batch()
    for image, region in zip(batch['data'], batch['region'].tolist()):
        assert (image == region).all()
    assert set(batch['region'].tolist()) <= {0, 2, 4, 6}  # never split across the single slice (bit 0)
