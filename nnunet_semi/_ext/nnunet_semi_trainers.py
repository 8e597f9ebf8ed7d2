"""Shim that nnUNet_extTrainer points at.

nnU-Net imports every module of an external trainer folder while it looks for a trainer class, then drops those
modules from sys.modules again. Classes *defined* here could therefore not be pickled (data augmentation workers).
This module only re-exports the trainers of the installed nnunet_semi package, whose modules stay importable.
"""
from nnunet_semi.trainers import *  # noqa: F401,F403
