"""Plain torch losses with documented tensor shapes. Nothing here imports a trainer."""
from nnunet_semi.losses.consistency import probabilities, softmax_mse
