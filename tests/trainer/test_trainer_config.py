"""trainer.training.config: loading, overrides, and one clear error per bad value."""

import subprocess
import sys

import pytest

from trainer.training import config as config_lib
from trainer.training.config import ConfigError

# Shipped config -> (method, student, V, T, global batch) it must produce; the
# paper's shapes (docs/DESIGN.md §1) for the gemma3 files. Update with the config files.
CONFIGS = {
    "tiny.py": ("kd", "tiny", 512, 32, 8),
    "tiny.py:hldf": ("hldf", "tiny", 512, 32, 8),
    "gemma3_270m.py:hldc": ("hldc", "gemma3-270m", 32000, 2048, 256),
    "gemma3_1b.py:kd": ("kd", "gemma3-1b", 32000, 2048, 256),
    "teacher.py": ("nll", "gemma3-4b", 32000, 2048, 256),
    "teacher.py:tiny-7": ("nll", "tiny-7", 512, 64, 8),
}


def _load(spec="trainer/configs/tiny.py", sets=()):
    return config_lib.load_config(spec, ["run_dir=/tmp/r", "store.url=/tmp/s", *sets])


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    config = _load(f"trainer/configs/{name}")
    config_lib.validate(config)
    assert (
        config.method,
        config.model.name,
        config.model.vocab_size,
        config.data.seq_len,
        config.data.batch_size,
    ) == CONFIGS[name]


@pytest.mark.parametrize(
    "name", ["tiny.py:hldf", "demo.py:hldf", "gemma3_270m.py:hldf", "gemma3_1b.py:hldf"]
)
def test_shipped_hldf_schedules_fit_their_default_budget(name):
    from trainer.training import loop as train
    from trainer.training import methods

    c = _load(f"trainer/configs/{name}")
    model_cfg = train.model_config_from(c)
    plans = train.plan_phases(c, model_cfg, methods.phases(c, model_cfg.num_layers))
    methods.check_schedules(c, [(p.phase, p.num_steps) for p in plans])


def test_defaults_distil():
    c = _load()
    assert c.loss.tail == "bucket" and c.loss.alpha == 0.7
    config_lib.validate(_load(sets=["loss.tau=0.5"]))  # bucket works at every τ


def test_alpha_schedule_endpoints_are_config_fields():
    from trainer.training import methods

    c = _load(sets=["loss.alpha_schedule=linear", "loss.alpha_start=0.2", "loss.alpha=0.6"])
    assert float(methods.alpha_at(c, 0, 10)) == pytest.approx(0.2)
    assert float(methods.alpha_at(c, 10, 10)) == pytest.approx(0.6)
    c = _load(
        sets=[
            "loss.alpha_schedule=wsd",
            "loss.alpha_final=0.3",
            "loss.alpha_start=0.7",
            "optim.warmup_steps=0",
            "optim.decay_fraction=0.5",
        ]
    )
    assert float(methods.alpha_at(c, 0, 10)) == pytest.approx(0.7)
    assert float(methods.alpha_at(c, 10, 10)) == pytest.approx(0.3)


def test_overrides_are_typed():
    c = _load(
        sets=[
            "optim.lr=1e-3",
            "loss.tau=2",
            "method=hldc",
            "mesh.fsdp=2",
            "store.allow_partial=True",
        ]
    )
    assert c.optim.lr == 1e-3 and isinstance(c.loss.tau, float) and c.loss.tau == 2.0
    assert c.method == "hldc" and c.mesh.fsdp == 2 and c.store.allow_partial is True


@pytest.mark.parametrize(
    "sets, match",
    [
        (["optim.lr=-1e-3"], "optim.lr"),
        (["loss.alpha=1.5"], "loss.alpha"),
        (["loss.alpha=-0.1"], "loss.alpha"),
        (["hldf.p1=0"], "hldf.p1"),
        (["hldf.p1=1.0"], "hldf.p1"),
        (["method=distill"], "unknown method 'distill'; use one of"),
        (["loss.alpha_schedule=cosine"], "loss.alpha_schedule"),
        (["loss.tail=zeros"], "loss.tail/loss.tau: unknown KD tail mode 'zeros'"),
        (["loss.divergence=kl"], "loss.divergence: unknown KD divergence 'kl'"),
        (["loss.alpha_start=1.5"], "loss.alpha_start"),
        (["loss.alpha_final=-0.5"], "loss.alpha_final"),
        (["budget.unit=tokens"], "budget.unit"),
        (["budget.value=-1"], "budget.value"),
        (["loss.tau=0"], "loss.tau"),
        (["loss.gamma=-1"], "loss.gamma"),
        (["data.batch_size=0"], "data.batch_size"),
        (["mesh.data=0"], "mesh.data"),
        (["method=hldc", "teacher.hidden_layer=0"], "teacher.hidden_layer"),
        (["run_dir="], "run_dir"),
    ],
)
def test_bad_values(sets, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(_load(sets=sets))


@pytest.mark.parametrize(
    "sets, match",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
        (["optim.lr"], "not key=value"),
        (["optim.lr=fast"], "optim.lr must be a float"),
        (["store.allow_partial=1"], "True or False"),
    ],
)
def test_bad_overrides(sets, match):
    with pytest.raises(ConfigError, match=match):
        _load(sets=sets)


def test_missing_config_file():
    with pytest.raises(ConfigError, match=r"neither a file nor a shipped config; .*'tiny'"):
        config_lib.load_config("trainer/configs/nope.py")


def test_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Outside the checkout: only shipped names resolve.
    assert {"tiny", "gemma3_270m", "teacher"} <= set(config_lib.shipped_configs())
    by_name = config_lib.load_config("gemma3_270m:hldc", ["store.url=s", "run_dir=runs/a"])
    assert by_name.method == "hldc" and by_name.model.name == "gemma3-270m"
    assert config_lib.load_config("tiny.py").model.name == "tiny"
    (tmp_path / "mine.py").write_text("from trainer.configs.tiny import get_config\n")
    assert config_lib.load_config("mine.py:nll").method == "nll"  # a file wins over a name


def test_path_fields_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = config_lib.load_config("tiny", ["store.url=data/st", "run_dir=runs/a"])
    assert c.store.url == str(tmp_path / "data" / "st") and c.run_dir == str(tmp_path / "runs/a")
    c = config_lib.load_config("tiny", ["store.url=s3://b/st", "run_dir="])
    assert c.store.url == "s3://b/st" and c.run_dir == ""  # URLs and "" untouched


def test_cli_prints_one_line_and_exits_nonzero():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "--config",
            "trainer/configs/tiny.py",
            "--set",
            "loss.alpha=2",
            "--set",
            "run_dir=/tmp/r",
            "--set",
            "store.url=/tmp/s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: loss.alpha=2.0 must be in [0, 1]"]
    assert "Traceback" not in proc.stderr


def test_help_names_defaults_and_config_names(capsys):
    from trainer.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "tiny:hldc" in out and "default: none" in out
