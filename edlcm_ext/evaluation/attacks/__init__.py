"""L-inf attacks on models that map images in [0, 1] to logits or log-probabilities (an Ensemble
returns log(mean softmax), which cross-entropy treats as logits of the same distribution).

One attack per module behind a registry, in the style of auto-attack and torchattacks: the base
class puts the model in eval mode (restoring its mode after), uses torch.autograd.grad (never
touches parameters' .grad) and returns detached adversarial images in [0, 1] within eps of x.
"""

from . import apgd, apgd_dlr, autoattack, fgsm, pgd, square  # noqa: E402,F401  (registers the attacks)
from .base import ATTACKS, LABELS, PRESETS, Attack, build_attack, expand_attack_names, margin, register  # noqa: F401  (the package's public names)
