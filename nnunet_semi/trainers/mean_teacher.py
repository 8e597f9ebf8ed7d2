"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017), as used as the baseline of the semi-supervised medical
segmentation papers this package implements.

The teacher is an exponential moving average of the student's weights. Each iteration the student learns the
labeled batch with nnU-Net's loss, and matches the teacher's prediction on the unlabeled batch, both seeing it under
independent Gaussian noise; the weight of that consistency term ramps up along a sigmoid curve.

The deployed network (``self.network``, what nnU-Net validates, checkpoints and predicts with) is the student, as in
the medical reference code (UA-MT, SSL4MIS), which evaluates the student; the teacher is saved under the
checkpoint's ``nnunet_semi`` key. ``nnUNetTrainerMeanTeacher_deployTeacher`` deploys the teacher instead (its weights
become the network's at the end of training).

``nnUNetTrainerMeanTeacher``, the default, adds FixMatch's term beside the consistency (trainers/weak_to_strong.py):
the teacher's confident pseudo-labels of the unlabeled batch supervise the student on a strong view of it. On nnU-Net
the paper's form, ``nnUNetTrainerMeanTeacher_noFixMatch``, is not above labeled-only: the noise it perturbs with is
below what nnU-Net's augmentation already adds (docs/mean_teacher.md).
"""
import torch

from nnunet_semi.losses.consistency import softmax_mse
from nnunet_semi.trainers.base import nnUNetTrainerSemi
from nnunet_semi.trainers.ramps import sigmoid_rampup
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import FixMatchTerm


class nnUNetTrainerMeanTeacher_noFixMatch(nnUNetTrainerSemi):
    """Mean Teacher as its paper and the medical reference code have it."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_teacher = True  # self.teacher: the base builds, updates (decay ema_decay, 0.99) and saves it
        self.consistency_weight = 0.1  # at full strength (UA-MT, SSL4MIS)
        self.consistency_rampup = 0.4  # fraction of all training iterations the sigmoid ramp-up takes
        self.noise_std = 0.1  # Gaussian input noise on the normalised image, clipped to +-noise_clip
        self.noise_clip = 0.2

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.clamp(torch.randn_like(x) * self.noise_std, -self.noise_clip, self.noise_clip)

    def consistency_weight_now(self) -> float:
        length = self.consistency_rampup * self.num_epochs * self.num_iterations_per_epoch
        return self.consistency_weight * sigmoid_rampup(self.iteration, length)

    def compute_losses(self, labeled, unlabeled):
        n, images = labeled['data'].shape[0], unlabeled['data']
        student_labeled, student_unlabeled = self.split_batch(
            self.network(torch.cat((labeled['data'], self.perturb(images)))), n)
        with torch.no_grad():
            teacher_unlabeled = self.teacher(self.perturb(images))
        consistency = softmax_mse(self.full_resolution(student_unlabeled), self.full_resolution(teacher_unlabeled),
                                  self.label_manager.has_regions)
        return {'supervised': (1.0, self.loss(student_labeled, labeled['target'])),
                'consistency': (self.consistency_weight_now(), consistency)}


class nnUNetTrainerMeanTeacher(FixMatchTerm, nnUNetTrainerMeanTeacher_noFixMatch):
    """Mean Teacher with FixMatch's term: its teacher's confident pseudo-labels supervise the student on a strong
    view (the default: measured above labeled-only where the paper's form is not, docs/mean_teacher.md)."""


__all__ = []
for _trainer in (nnUNetTrainerMeanTeacher_noFixMatch, nnUNetTrainerMeanTeacher):
    __all__ += [_trainer.__name__] + add_short_variants(_trainer, globals())
__all__ += add_variant(nnUNetTrainerMeanTeacher, 'nnUNetTrainerMeanTeacher_FixMatch', globals())  # its earlier name
__all__ += add_variant(nnUNetTrainerMeanTeacher, 'nnUNetTrainerMeanTeacher_deployTeacher', globals(),
                       deploy_teacher=True)
