"""FixMatch's weak-to-strong pseudo-label term (Sohn et al., NeurIPS 2020), written once for nnUNetTrainerFixMatch,
nnUNetTrainerUniMatch and the ``_FixMatch`` variants of the other methods.

On an unlabeled batch u (its weak view: nnU-Net's own augmentation):

    lambda_u  L_pl(f(A(u)), y, m)

- y, m: the pseudo-label of each voxel, argmax of the prediction on the weak view (no gradient) by the EMA teacher
  where the method has one (``self.teacher``), else by the network itself, and the mask of voxels whose probability
  reaches ``confidence_threshold`` (0.95);
- A: a strong view (data/strong_views.py): per-sample contrast, shift, gamma, noise and blur, then CutMix of a box
  (2-40 % of the patch, as UniMatch's) from another unlabeled sample, whose pseudo-labels and mask are mixed with the
  same box;
- L_pl: cross-entropy on the confident voxels at every deep-supervision scale (losses/pseudo_label.py), pseudo-labels
  and masks downsampled as nnU-Net downsamples its targets, with nnU-Net's scale weights, plus a soft Dice over the
  same voxels (``pseudo_label_dice``; False: FixMatch's cross-entropy alone); ``class_balanced`` weights each voxel's
  cross-entropy by the inverse share of its pseudo-class among the confident voxels; lambda_u = 1, no ramp-up.

``FixMatchTerm`` adds the term, and the share of confident voxels, to the loss terms of any method whose step that
trains its deployed network goes through ``compute_losses``: ``add_fixmatch_variant(nnUNetTrainerSSCL, globals())``
defines ``nnUNetTrainerSSCL_FixMatch`` (the network's own pseudo-labels) and ``nnUNetTrainerSSCL_FixMatchEMA``
(an EMA teacher's). Mean Teacher and MASSL have the term by default (their ``_noFixMatch`` is the paper's form).
The term costs one more forward and backward pass of the deployed network on the unlabeled batch. A method without
unlabeled batches of its own (the siamese fine-tuning) gets them with the term; one that has them only in part of
its training (PLContrast's rounds) has the term there only.
"""
import torch

from nnunet_semi.data.strong_views import cutmix_boxes, intensity_view, mix
from nnunet_semi.losses.pseudo_label import class_balance_weights, pseudo_labels
from nnunet_semi.trainers.variants import add_variant


class WeakToStrong:
    """Mixin for a subclass of nnUNetTrainerSemi: FixMatch's settings (a subclass changes them in ``__init__``) and
    parts."""
    confidence_threshold = 0.95  # tau
    unsupervised_weight = 1.0  # lambda_u
    class_balanced = False  # True: inverse-frequency weights of the pseudo-classes (docs/fixmatch.md)
    pseudo_label_dice = True  # a soft Dice on the confident voxels beside their CE; False: CE alone
    cutmix_probability = 1.0
    cutmix_area = (0.02, 0.4)  # of the patch

    def strong_view(self, images, labels, mask):
        """The strong view of the unlabeled images, and the pseudo-labels and mask that go with it."""
        boxes = cutmix_boxes(images.shape[0], images.shape[2:], self.cutmix_area, self.cutmix_probability,
                             images.device)
        other = torch.roll(torch.arange(images.shape[0], device=images.device), 1)  # the sample a box comes from
        strong = intensity_view(images)
        return mix(strong, strong[other], boxes), mix(labels, labels[other], boxes), mix(mask, mask[other], boxes)

    def weak_pseudo_labels(self, images):
        """(pseudo-labels, confidence mask) of the weak view, from the EMA teacher or the network, no gradient."""
        with torch.no_grad():
            weak = self.full_resolution((self.teacher or self.network)(images))
        labels, _, mask = pseudo_labels(weak, self.label_manager.has_regions, self.confidence_threshold)
        return labels, mask

    def pseudo_label_loss(self, output, labels, mask):
        """L_pl of a network output (deep-supervision list or tensor) against full-resolution pseudo-labels."""
        weights = class_balance_weights(labels, mask, self.label_manager.num_segmentation_heads) \
            if self.class_balanced and not self.label_manager.has_regions else None
        return self.masked_loss(output, labels, mask, dice=self.pseudo_label_dice, class_weights=weights)

    def weak_to_strong_terms(self, images):
        """The pseudo-label term of the deployed network on a strong view of the unlabeled ``images`` (B, C, *patch),
        and the share of confident voxels (logged)."""
        labels, mask = self.weak_pseudo_labels(images)
        strong, strong_labels, strong_mask = self.strong_view(images, labels, mask)
        return {'pseudo_label': (self.unsupervised_weight,
                                 self.pseudo_label_loss(self.network(strong), strong_labels, strong_mask)),
                'confident_share': (None, mask.float().mean())}


class FixMatchTerm(WeakToStrong):
    """Mixin: the method's loss terms plus FixMatch's pseudo-label term of its deployed network, in the same step."""
    uses_unlabeled_data = True  # the term's batch, also for a method that trains on labeled cases only

    def compute_losses(self, labeled, unlabeled):
        terms = super().compute_losses(labeled, unlabeled)
        if unlabeled is not None:
            terms.update(self.weak_to_strong_terms(unlabeled['data']))
        return terms


def add_fixmatch_variant(base: type, namespace: dict) -> list:
    """Define ``<base>_FixMatch``, ``base`` with FixMatch's term, and ``<base>_FixMatchEMA``, whose pseudo-labels come
    from an EMA teacher of the deployed network, as nnUNetTrainerFixMatch's, with their short schedules in
    ``namespace`` (a module's globals()); returns their names."""
    return add_variant(base, f'{base.__name__}_FixMatch', namespace, mixins=(FixMatchTerm,)) + \
        add_variant(base, f'{base.__name__}_FixMatchEMA', namespace, mixins=(FixMatchTerm,), ema_teacher=True)
