"""The public trainers (DESIGN.md), found by nnU-Net through the shim in nnunet_semi/_ext."""
from nnunet_semi.trainers import caml, massl, mean_teacher, pl_contrast, siamese, sscl, stock
from nnunet_semi.trainers.base import nnUNetTrainerSemi
from nnunet_semi.trainers.caml import *  # noqa: F401,F403
from nnunet_semi.trainers.massl import *  # noqa: F401,F403
from nnunet_semi.trainers.mean_teacher import *  # noqa: F401,F403
from nnunet_semi.trainers.pl_contrast import *  # noqa: F401,F403
from nnunet_semi.trainers.siamese import *  # noqa: F401,F403
from nnunet_semi.trainers.sscl import *  # noqa: F401,F403
from nnunet_semi.trainers.stock import *  # noqa: F401,F403

__all__ = (['nnUNetTrainerSemi'] + caml.__all__ + massl.__all__ + mean_teacher.__all__ + pl_contrast.__all__ +
           siamese.__all__ + sscl.__all__ + stock.__all__)
