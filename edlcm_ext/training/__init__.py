"""The lab's trainer: configuration, datasets, checkpoints and the training methods (EDLCM and the
baselines), on top of the loss and the models."""
