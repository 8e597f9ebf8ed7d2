"""Unlabeled data: discovery in nnUNet_raw, preprocessing with the labeled plans, label hiding, the loader."""
