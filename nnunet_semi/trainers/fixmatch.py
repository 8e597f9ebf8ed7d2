"""FixMatch (Sohn et al., NeurIPS 2020), for segmentation on nnU-Net's networks and data.

Each iteration, on the labeled batch and the unlabeled batch u (its weak view: nnU-Net's own augmentation):

    L = L_DC+CE(labeled)  +  lambda_u  L_pl(f(A(u)), y, m)

- y, m: the pseudo-label of each voxel, argmax of the network's prediction on the weak view (no gradient; or of an EMA
  teacher's, ``ema_teacher``), and the mask of voxels whose probability reaches ``confidence_threshold`` (0.95);
- A: a strong view (data/strong_views.py): per-sample contrast, shift, gamma, noise and blur, then CutMix of a box
  (2-40 % of the patch, as UniMatch's) from another unlabeled sample, whose pseudo-labels and mask are mixed with the
  same box;
- L_pl: cross-entropy on the confident voxels at every deep-supervision scale (losses/pseudo_label.py), pseudo-labels
  and masks downsampled as nnU-Net downsamples its targets, with nnU-Net's scale weights; lambda_u = 1, no ramp-up
  (FixMatch's); the plain mean over the confident voxels, plus a soft Dice over them (``pseudo_label_dice``), nnU-Net's
  own DC+CE form, whose Dice weighs each foreground class alike however few its voxels. Departure: FixMatch's loss is
  the cross-entropy alone (``_CE``); with one labeled case the Dice term gained on every split measured
  (docs/fixmatch.md).
  ``class_balanced`` (``_balanced``) weights each confident voxel's cross-entropy by the inverse share of its
  pseudo-class among the batch's confident voxels: measured with the cross-entropy alone, on Hippocampus with one
  labeled case it amplified the early, wrong foreground pseudo-labels and collapsed the training (docs/fixmatch.md).

``_spatialWeak``: the weak view gets nnU-Net's spatial transforms and mirroring but not its intensity transforms
(FixMatch's weak view is a flip and a shift only); the strong view then starts from the un-perturbed intensities.

The share of confident voxels is logged beside the terms. The deployed network is nnU-Net's plain network.
"""
import torch

from nnunet_semi.data.strong_views import cutmix_boxes, intensity_view, mix
from nnunet_semi.losses.pseudo_label import class_balance_weights, masked_pseudo_label_loss, pseudo_labels
from nnunet_semi.trainers.base import nnUNetTrainerSemi
from nnunet_semi.trainers.variants import add_short_variants, define_variant


class nnUNetTrainerFixMatch(nnUNetTrainerSemi):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.confidence_threshold = 0.95  # tau
        self.unsupervised_weight = 1.0  # lambda_u
        self.class_balanced = False  # True: inverse-frequency weights of the pseudo-classes (docs/fixmatch.md)
        self.pseudo_label_dice = True  # a soft Dice on the confident voxels beside their CE; False: CE alone (_CE)
        self.cutmix_probability = 1.0
        self.cutmix_area = (0.02, 0.4)  # of the patch
        # ema_teacher (the base's, False): True takes the pseudo-labels from an EMA of the network (decay ema_decay)

    def strong_view(self, images, labels, mask):
        """The strong view of the unlabeled images, and the pseudo-labels and mask that go with it."""
        boxes = cutmix_boxes(images.shape[0], images.shape[2:], self.cutmix_area, self.cutmix_probability,
                             images.device)
        other = torch.roll(torch.arange(images.shape[0], device=images.device), 1)  # the sample a box comes from
        strong = intensity_view(images)
        return mix(strong, strong[other], boxes), mix(labels, labels[other], boxes), mix(mask, mask[other], boxes)

    def weak_pseudo_labels(self, images):
        """(pseudo-labels, confidence mask) of the weak view, from the network (or the EMA teacher), no gradient."""
        with torch.no_grad():
            weak = self.full_resolution((self.teacher or self.network)(images))
        labels, _, mask = pseudo_labels(weak, self.label_manager.has_regions, self.confidence_threshold)
        return labels, mask

    def pseudo_label_loss(self, output, labels, mask):
        """L_pl of a network output (deep-supervision list or tensor) against full-resolution pseudo-labels."""
        regions = self.label_manager.has_regions
        weights = class_balance_weights(labels, mask, self.label_manager.num_segmentation_heads) \
            if self.class_balanced and not regions else None
        return masked_pseudo_label_loss(output, labels, mask, regions, self.deep_supervision_weights(),
                                        dice=self.pseudo_label_dice, class_weights=weights)

    def compute_losses(self, labeled, unlabeled):
        n, images = labeled['data'].shape[0], unlabeled['data']
        labels, mask = self.weak_pseudo_labels(images)
        strong, strong_labels, strong_mask = self.strong_view(images, labels, mask)
        out_labeled, out_strong = self.split_batch(self.network(torch.cat((labeled['data'], strong))), n)
        return {'supervised': (1.0, self.loss(out_labeled, labeled['target'])),
                'pseudo_label': (self.unsupervised_weight, self.pseudo_label_loss(out_strong, strong_labels,
                                                                                  strong_mask)),
                'confident_share': (None, mask.float().mean())}


__all__ = ['nnUNetTrainerFixMatch'] + add_short_variants(nnUNetTrainerFixMatch, globals())
for _suffix, _settings in {'balanced': {'class_balanced': True}, 'EMA': {'ema_teacher': True},
                           'CE': {'pseudo_label_dice': False},
                           'spatialWeak': {'unlabeled_intensity_transforms': False}}.items():
    _variant = define_variant(nnUNetTrainerFixMatch, f'nnUNetTrainerFixMatch_{_suffix}', globals(), **_settings)
    __all__ += [_variant.__name__] + add_short_variants(_variant, globals())
