"""Bidirectional copy-paste, BCP (Bai et al., CVPR 2023), on nnU-Net's networks and data.

Two stages inside one nnU-Net schedule:

1. **Copy-paste pre-training** (the first ``warmup_share`` of the epochs, BCP's 10,000 of 40,000 iterations on
   ACDC; whole epochs, so that an epoch's log holds one stage): labeled images only. The box of one labeled patch
   pasted into another, supervised by both ground truths.
2. **Self-training.** The EMA teacher starts again from the network (BCP loads the pre-trained weights into both)
   and labels the unlabeled batch: argmax, each class reduced to its largest connected component, no threshold.
   With one box M per batch (each side 2/3 of the patch), labeled images l_a, l_b and unlabeled u_a, u_b (the halves
   of the two batches):

       x_in  = u_a outside M, l_a inside      supervised by  y(u_a) outside (weight 0.5), GT(l_a) inside (weight 1)
       x_out = l_b outside M, u_b inside      supervised by  GT(l_b) outside (weight 1), y(u_b) inside (weight 0.5)

   so labeled and unlabeled patches are mixed both ways and the network never learns them apart.

Each part's loss is cross-entropy (BCE for regions) averaged over that part's voxels plus a soft Dice over them, at
every deep-supervision scale with nnU-Net's weights (losses/pseudo_label.py): the ground-truth parts of x_in and x_out
averaged, weight 1, the pseudo-labeled parts averaged, weight ``unlabeled_weight`` (0.5, BCP's u_weight). That is
BCP's (Dice + CE) / 2 summed over the two images, and each part on nnU-Net's scale (CE + Dice). BCP's pre-training
loss is the same with both parts ground truth, weight 1.

Departure, measured: every iteration, in both stages, the network also takes stock nnU-Net's step on the un-mixed
labeled batch (``supervised``, weight ``labeled_weight`` 1), where BCP trains on the mixed images only
(``_mixedOnly``). Trained on mixed images only, the network never sees a whole labeled image, and on Hippocampus with
three labeled cases it trailed labeled-only nnU-Net through most of its training; with the term it gained more on
each of the three splits (docs/bcp.md). It costs one more forward and backward pass of the labeled batch.

Departure, for nnU-Net's schedule: BCP's own SGD schedules (constant lr on ACDC, a fresh optimizer with step decay
on LA) give way to one nnU-Net poly schedule through both stages, so the budget is every trainer's; docs/bcp.md lists
the other departures. The deployed network is the student (BCP evaluates the
student); the teacher is saved under the checkpoint's ``nnunet_semi`` key.
"""
import torch

from nnunet_semi.data.strong_views import copy_paste_box, mix
from nnunet_semi.losses.pseudo_label import largest_component, pseudo_labels
from nnunet_semi.trainers.base import nnUNetTrainerSemi
from nnunet_semi.trainers.variants import add_short_variants, add_variant


def copy_paste_both_ways(labeled: tuple, unlabeled: tuple, box: torch.Tensor):
    """BCP's two mixed batches. ``labeled``, ``unlabeled``: tuples of tensors mixed alike (images, labels, valid
    masks), split into halves a and b (the first n samples of each, n the smaller batch; where n is 1 the one pair is
    mixed both ways); ``box`` (B, *spatial). Returns (in, out, box of the halves): ``in`` holds the unlabeled a
    outside the box and the labeled a inside, ``out`` the labeled b outside and the unlabeled b inside."""
    n = min(labeled[0].shape[0], unlabeled[0].shape[0])
    half = (n + 1) // 2
    a, b, box = slice(0, half), slice(n - half, n), box[:half]
    mixed_in = tuple(mix(u[a], l[a], box) for l, u in zip(labeled, unlabeled))
    mixed_out = tuple(mix(l[b], u[b], box) for l, u in zip(labeled, unlabeled))
    return mixed_in, mixed_out, box


class nnUNetTrainerBCP(nnUNetTrainerSemi):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_teacher = True  # decay ema_decay, 0.99 (BCP's)
        self.unlabeled_weight = 0.5  # of the pseudo-labeled part (BCP's u_weight); the ground-truth part weighs 1
        self.box_side = 2 / 3  # of each side of the patch
        self.warmup_share = 0.25  # of the epochs (rounded): labeled-only copy-paste pre-training
        self.largest_component = True  # pseudo-labels: each class's largest connected component (BCP's ACDC code)
        self.confidence_threshold = 0.95  # only for the logged share of confident voxels: BCP keeps every voxel
        self.labeled_weight = 1.0  # stock nnU-Net's loss on the un-mixed labeled batch too; 0: BCP's (``_mixedOnly``)

    def warmup_iterations(self) -> int:
        return int(round(self.warmup_share * self.num_epochs)) * self.num_iterations_per_epoch

    def ground_truth(self, target):
        """(labels, valid mask) at full resolution from nnU-Net's target: labels as the pseudo-labels are given
        ((B, *spatial) classes, or (B, R, *spatial) regions), valid False on nnU-Net's ignore label."""
        t = self.full_resolution(target)
        manager = self.label_manager
        if manager.has_regions:
            if manager.has_ignore_label:  # nnU-Net's last channel marks the ignored voxels
                return t[:, :-1], (t[:, -1:] == 0).expand_as(t[:, :-1])
            return t, torch.ones_like(t, dtype=torch.bool)
        labels = t[:, 0].long()
        if manager.has_ignore_label:
            valid = labels != manager.ignore_label
            return torch.where(valid, labels, 0), valid
        return labels, torch.ones_like(labels, dtype=torch.bool)

    def teacher_labels(self, images):
        """The teacher's pseudo-labels of the unlabeled images, and the share of its voxels that are confident."""
        with torch.no_grad():
            logits = self.full_resolution(self.teacher(images))
        labels, _, confident = pseudo_labels(logits, self.label_manager.has_regions, self.confidence_threshold)
        if self.largest_component:
            labels = largest_component(labels, self.label_manager.has_regions)
        return labels, confident.float().mean()

    def part_loss(self, output, labels, valid, part):
        """The loss on the voxels of one part (a box or its outside, (B, *spatial) bool) of mixed images."""
        if valid.ndim > part.ndim:  # regions: the part holds for every channel
            part = part[:, None].expand_as(valid)
        return self.masked_loss(output, labels, valid & part)

    def compute_losses(self, labeled, unlabeled):
        terms = self.copy_paste_terms(labeled, unlabeled)
        if self.labeled_weight:
            terms['supervised'] = (self.labeled_weight, self.labeled_loss(labeled))
        return terms

    def copy_paste_terms(self, labeled, unlabeled):
        """BCP's loss terms: the copy-paste pre-training's, or the self-training's on the two mixed batches."""
        images, (labels, valid) = labeled['data'], self.ground_truth(labeled['target'])
        box = copy_paste_box(images.shape[0], images.shape[2:], self.box_side, images.device)
        if self.iteration < self.warmup_iterations():  # copy-paste of labeled patches only, both parts ground truth
            other = torch.roll(torch.arange(images.shape[0], device=images.device), 1)
            output = self.network(mix(images, images[other], box))
            mixed, mixed_valid = mix(labels, labels[other], box), mix(valid, valid[other], box)
            both = (self.part_loss(output, mixed, mixed_valid, ~box) + self.part_loss(output, mixed, mixed_valid, box))
            return {'ground_truth_part': (1.0, both / 2), 'pseudo_label_part': (0.0, images.new_zeros(()))}
        if self.iteration == self.warmup_iterations():
            self.reset_teacher()  # BCP's self-training starts its teacher from the pre-trained network
        u_images = unlabeled['data']
        u_labels, confident_share = self.teacher_labels(u_images)
        (x_in, y_in, v_in), (x_out, y_out, v_out), box = copy_paste_both_ways(
            (images, labels, valid), (u_images, u_labels, torch.ones_like(u_labels, dtype=torch.bool)), box)
        out_in, out_out = self.split_batch(self.network(torch.cat((x_in, x_out))), x_in.shape[0])
        ground_truth = (self.part_loss(out_in, y_in, v_in, box) + self.part_loss(out_out, y_out, v_out, ~box)) / 2
        pseudo = (self.part_loss(out_in, y_in, v_in, ~box) + self.part_loss(out_out, y_out, v_out, box)) / 2
        return {'ground_truth_part': (1.0, ground_truth),
                'pseudo_label_part': (self.unlabeled_weight, pseudo),
                'confident_share': (None, confident_share)}


__all__ = ['nnUNetTrainerBCP'] + add_short_variants(nnUNetTrainerBCP, globals()) + \
    add_variant(nnUNetTrainerBCP, 'nnUNetTrainerBCP_mixedOnly', globals(), labeled_weight=0.0) + \
    add_variant(nnUNetTrainerBCP, 'nnUNetTrainerBCP_noWarmup', globals(), warmup_share=0.0)
