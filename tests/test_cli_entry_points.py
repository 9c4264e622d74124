"""The commands: installed console scripts, and `python -m` kept safe.

* every console script in setup.cfg names a callable `main`;
* `python -m trainer` from a directory holding `./store` (a package of the
  user's) notes it in one line and runs on our packages (it used to die with an
  ImportError masked by an UnboundLocalError);
* an import error inside `python -m trainer` is shown as itself.
"""

import configparser
import importlib
import os
import subprocess
import sys

import pytest

from trainer import __main__ as trainer_main
from trainer.model import cli_guard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_every_console_script_names_a_main():
    scripts = _console_scripts()
    assert {"hd-dump", "hd-train", "hd-store", "hd-evaluate", "hd-convert"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_shadowing_directories_are_found_outside_the_checkout(tmp_path):
    assert cli_guard.shadowing_dirs(ROOT) == []
    (tmp_path / "store").mkdir()
    (tmp_path / "pipelines").mkdir()
    assert cli_guard.shadowing_dirs(str(tmp_path)) == ["store", "pipelines"]


def test_python_m_trainer_next_to_a_store_package(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "__init__.py").write_text("")  # a user's own `store` package
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", "tiny:kd", "--print-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[0].startswith("note: ./store in the working directory")
    assert '"method": "kd"' in proc.stdout


def test_an_import_error_is_not_masked(monkeypatch):
    import trainer.training

    # `from trainer.training import loop` now fails, also where an earlier test imported it.
    monkeypatch.delattr(trainer.training, "loop", raising=False)
    monkeypatch.setitem(sys.modules, "trainer.training.loop", None)
    with pytest.raises(ImportError):
        trainer_main.main(["--config", "tiny:kd"])


@pytest.mark.parametrize(
    "module",
    [
        "trainer.__main__",
        "trainer.flops",
        "trainer.export_hf",
        "trainer.rounds.__main__",
        "trainer.model.hf_import",
        "pipelines.dump",
        "teacher_dump.convert.__main__",
    ],
)
def test_help_needs_no_heavy_import(module):
    code = (
        f"import sys; from {module} import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('jax', 'apache_beam', 'tensorstore') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]
