"""pytest-benchmark cases of bench/step.py (run: pytest bench/ --benchmark-group-by=param:config).

Not part of the test suite (testpaths = tests): speed is measured here, never asserted in tests.
"""

import pytest
import torch
from harness import CONFIGS, MODES, QUICK_CONFIGS, make_batch, make_ensemble, make_step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", ["small_cnn", "resnet18"])
def test_training_step(benchmark, config, mode):
    chosen = CONFIGS[config] if DEVICE.type == "cuda" else QUICK_CONFIGS[config]
    x, y = make_batch(chosen, DEVICE, MODES[mode])
    step = make_step(MODES[mode], make_ensemble(chosen, DEVICE, MODES[mode]))

    def synchronized_step():
        step(x, y)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(synchronized_step, rounds=5, warmup_rounds=1)
