"""Stock nnUNetTrainer on the short schedules of the semi trainers, so a labeled-only baseline (or a model to start
a semi trainer from with -pretrained_weights) can be trained on the same budget. nnU-Net has its own
nnUNetTrainer_5epochs etc.; only the smoke schedule is added here."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semi.trainers.variants import add_short_variants

__all__ = add_short_variants(nnUNetTrainer, globals(), epochs=())
