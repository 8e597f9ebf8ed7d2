"""Patches for the siamese proxy task (METHODS.md section 4): each patch comes from one region of its volume, and the
region is its label.

Regions (``mode``):

- ``left_right`` (default): the patient's right (0) or left (1) half of the volume. The left-right axis and its sense
  are read per case from the geometry nnU-Net keeps (SimpleITK's direction, LPS; nibabel's affine, RAS) and carried
  through the plans' ``transpose_forward`` to the axis of the preprocessed volume. Images without orientation fall
  back to ``halves`` along the last axis.
- ``halves``: the lower (0) or upper (1) half along one axis of the preprocessed volume, for anatomy without a
  left/right pair, or to override the geometry.
- ``octants``: which half along every axis at once (8 regions in 3d; 4 quadrants for 2d images).

Placement keeps the task from being trivial. Whole halves teach position, not shape: the cut at the midline and the
zero padding beside it tell the side at a glance. Here a patch lies inside its half, its extent along a split axis
is cut to fit half the median volume (``proxy_patch_size``), and its distance from the midline is drawn from the same
distribution on both sides ("mirrored positions"). No patch touches the cut, and where it lies along the axis says
nothing about the side. What is left to tell the regions apart is the anatomy in the patch. Mirroring augmentation
must stay off: a mirrored left patch looks like a right one.

Labels are never read: a labeled training case enters as an image, like an unlabeled one. The geometry comes from
each case's properties file, of which only the orientation entries are kept.
"""
import pickle
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_semi.data.loader import UnlabeledDataLoader, UnlabeledImages

LEFT_RIGHT, HALVES, OCTANTS = 'left_right', 'halves', 'octants'
MODES = (LEFT_RIGHT, HALVES, OCTANTS)
Split = List[Tuple[int, bool]]  # (axis of the preprocessed volume, True: the upper half is region bit 1)


def left_right_axis(properties: dict, transpose_forward: Sequence[int]) -> Optional[Tuple[int, int]]:
    """(axis of the preprocessed volume that runs left-right, +1 if the index grows toward the patient's left, else -1),
    or None for an image without a 3d orientation (natural images, 2d images).

    nnU-Net's readers give arrays with the image's index axes reversed ((z, y, x) for SimpleITK, and nibabel's data
    transposed the same way), then the plans transpose them: preprocessed axis p is array axis transpose_forward[p]."""
    if 'sitk_stuff' in properties and len(properties['sitk_stuff']['direction']) == 9:
        rows = np.reshape(properties['sitk_stuff']['direction'], (3, 3))  # LPS: physical x grows toward the left
        sense = 1
    elif 'nibabel_stuff' in properties:
        stuff = properties['nibabel_stuff']
        rows = np.asarray(stuff.get('reoriented_affine', stuff['original_affine']))[:3, :3]  # RAS: x grows right
        sense = -1
    else:
        return None
    index_axis = int(np.argmax(np.abs(rows[0])))  # the index axis most aligned with physical x
    array_axis = 2 - index_axis
    return list(transpose_forward).index(array_axis), int(np.sign(rows[0, index_axis])) * sense


class ProxyCases(UnlabeledImages):
    """Images by key (key -> file path without ending), with each case's orientation from its properties file."""

    def orientation(self, key: str) -> dict:
        with open(self.cases[key] + '.pkl', 'rb') as f:
            properties = pickle.load(f)
        return {k: v for k, v in properties.items() if k in ('sitk_stuff', 'nibabel_stuff')}


class RegionSplit:
    """Which axes split a case into regions, and which half of each is region bit 1 (see the module doc).

    ``axis``: the axis of the preprocessed volume for ``halves`` (default: the last)."""

    def __init__(self, mode: str, cases: ProxyCases, transpose_forward: Sequence[int], axis: Optional[int] = None):
        if mode not in MODES:
            raise ValueError(f'unknown proxy region mode {mode!r}; choose one of {MODES}')
        self.mode, self.cases, self.transpose_forward = mode, cases, transpose_forward
        self.axis = 2 if axis is None else axis
        self._splits: Dict[str, Split] = {}
        self.without_orientation: List[str] = []

    @property
    def num_regions(self) -> int:
        return 8 if self.mode == OCTANTS else 2

    def __call__(self, key: str) -> Split:
        if key not in self._splits:
            self._splits[key] = self._split(key)
        return self._splits[key]

    def _split(self, key: str) -> Split:
        if self.mode == OCTANTS:
            return [(a, True) for a in range(3)]
        if self.mode == LEFT_RIGHT:
            found = left_right_axis(self.cases.orientation(key), self.transpose_forward)
            if found is not None:
                axis, toward_left = found
                return [(axis, toward_left > 0)]  # region 1 = the patient's left half
            self.without_orientation.append(key)
        return [(self.axis, True)]

    def dataset_axes(self, max_cases: int = 50) -> List[int]:
        """The split axes of most cases (read from up to ``max_cases`` of them): they decide the proxy patch size."""
        keys = self.cases.identifiers[:max_cases]
        votes = Counter(tuple(a for a, _ in self(k)) for k in keys)
        return list(votes.most_common(1)[0][0]) if votes else [self.axis]


def proxy_patch_size(patch_size: Sequence[int], split_axes: Sequence[int], median_shape: Sequence[float],
                     total_strides: Sequence[int]) -> List[int]:
    """The planned patch with its extent along each split axis cut to fit into half the median volume, in whole
    multiples of the network's total stride along that axis (at least one).

    patch_size, median_shape, total_strides: per patch axis (2 or 3 entries). split_axes: axes of the preprocessed
    volume (3d); for a 2d patch, volume axis a >= 1 is patch axis a - 1, and a split across slices (axis 0) leaves
    the patch as it is."""
    size = list(patch_size)
    offset = 3 - len(size)
    for a in split_axes:
        p = a - offset
        if p < 0:
            continue
        fit = int(median_shape[p] // 2) // int(total_strides[p]) * int(total_strides[p])
        size[p] = max(total_strides[p], min(size[p], fit))
    return [int(s) for s in size]


def start_in_half(extent: int, final: int, initial: int, upper: bool) -> int:
    """The lower bound of an ``initial``-sized crop whose central ``final``-sized patch lies in the lower or upper
    half of an axis of ``extent`` voxels (the middle voxel of an odd extent belongs to neither). The patch's distance
    from the midline is uniform over what the half allows, the same on both sides; a patch larger than its half
    starts at the midline and reaches past the outer border (padded)."""
    half = extent // 2
    distance = np.random.randint(max(0, half - final) + 1)
    final_start = extent - half + distance if upper else half - distance - final
    return final_start - (initial - final) // 2


class RegionPatchLoader(UnlabeledDataLoader):
    """Batches ``{'data': (B, C, *patch), 'region': (B,) long region of each patch, 'keys': [...]}``: a random case
    and a random region per sample (independently, so a pair is from the same region about half the time), the patch
    placed in that region by ``start_in_half`` along the split axes and uniformly along the others, then nnU-Net's
    transforms."""

    def __init__(self, data: ProxyCases, batch_size: int, patch_size, final_patch_size, label_manager,
                 split: RegionSplit, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager, transforms=transforms)
        self.split = split

    def place_patch(self, key: str, shape) -> Tuple[list, int]:
        """The patch's lower corner (volume axes) and its region."""
        lbs, _ = super().place_patch(key, shape)
        region = 0
        for bit, (axis, upper_is_one) in enumerate(self.split(key)):
            if shape[axis] < 2:  # a 2d image has one slice: its octants are quadrants
                continue
            one = np.random.randint(2)
            lbs[axis] = start_in_half(shape[axis], self.final_patch_size[axis], self.patch_size[axis],
                                      upper=bool(one) == upper_is_one)
            region += one << bit
        return lbs, region
