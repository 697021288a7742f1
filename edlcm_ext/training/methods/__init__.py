"""Training methods behind a small registry, one file each (as auto-attack keeps its attacks).

A method turns (ensemble, x, y) into the loss to minimise and a dict of scalar tensors to log (the
trainer detaches them and reads them once per logging interval, so no step waits on the device).
It is built from its paper's defaults, which keyword overrides replace.
"""

from . import adp, adversarial_training, edlcm, gradient_alignment, pdd, plain, trs  # noqa: E402,F401  (registers the methods)
from .base import METHODS, Method, build_method, register  # noqa: F401  (the package's public names)
