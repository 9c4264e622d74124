"""The loss settings' vocabulary (trainer.training.loss_options) and the config system load without JAX."""

import subprocess
import sys

import pytest

from trainer.model.errors import ConfigError
from trainer.training import loss_options

# Run in a fresh interpreter: this test process has JAX loaded already.
_PROBE = "import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))"


@pytest.mark.parametrize("module", ["trainer.training.config", "trainer.sweep"])
def test_config_system_imports_without_jax(module):
    # trainer.sweep imports trainer.report and the config: what `--help` of both CLIs loads.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert out == "[]", f"importing {module} loaded JAX: {out[:200]}"


def test_parsers_name_the_allowed_values():
    assert loss_options.parse_signal("sampled") is loss_options.Signal.SAMPLED
    assert loss_options.parse_alpha_schedule("wsd") is loss_options.AlphaSchedule.WSD
    assert loss_options.parse_hidden_reduction("sum") is loss_options.HiddenReduction.SUM
    with pytest.raises(ConfigError, match="renormalize"):
        loss_options.parse_tail_mode("tails")


def test_sampled_settings_refused_with_the_fix():
    loss_options.check_sampled_settings(1.0, "forward_kl")
    with pytest.raises(ConfigError, match="loss.tau=1.0"):
        loss_options.check_sampled_settings(2.0, "forward_kl")
    with pytest.raises(ConfigError, match="loss.divergence=forward_kl"):
        loss_options.check_sampled_settings(1.0, "jsd")
