"""The lab's evaluator: attacks, the per-sample worst case, curvature diagnostics and reports, on
top of the models, the loss and the trainer's checkpoints."""
