"""Semi-supervised learning for an unmodified nnU-Net v2."""
__version__ = '0.1.0'
