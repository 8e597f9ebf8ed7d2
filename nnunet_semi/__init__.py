"""Semi-supervised learning for an unmodified nnU-Net v2."""
__version__ = '0.1.0'

STOCK = 'nnUNetTrainer'  # stock nnU-Net's trainer: the labeled-only baseline every method is measured against
