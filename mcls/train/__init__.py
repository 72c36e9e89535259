"""Training: augmentations and mixing, losses, fitting one fold, a run over folds, members, pseudo-labels."""
