"""Training of the ResUNet: data, augmentation, losses and the loop (``python training/train.py``)."""
