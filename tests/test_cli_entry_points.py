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
        "pipelines.train_tokenizer",
        "store.cli",
        "trainer.report",
        "trainer.sweep",
        "trainer.evaluate.__main__",
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


# `python -m X --help` also runs X's package __init__ files (store/__init__.py used to load
# TensorStore for every `python -m store`); an unknown flag must be refused as early.
@pytest.mark.parametrize(("flag", "rc"), [("--help", 0), ("--no-such-flag", 2)])
@pytest.mark.parametrize(
    "module",
    [
        "trainer",
        "trainer.sweep",
        "trainer.report",
        "trainer.flops",
        "trainer.export_hf",
        "trainer.plan",
        "trainer.evaluate",
        "store",
        "pipelines.dump",
        "pipelines.train_tokenizer",
        "teacher_dump.convert",
    ],
)
def test_python_m_help_and_bad_flags_need_no_heavy_import(module, flag, rc):
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, {flag!r}]\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n"
        "    print('rc', e.code)\n"
        "print(sorted(m for m in ('jax', 'apache_beam', 'tensorstore') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == [f"rc {rc}", "[]"], (proc.stdout[-2000:], proc.stderr[-2000:])


def test_store_exports_load_on_first_use():
    # store/__init__ imports its reader and writer (TensorStore) only when they are used; a
    # bare `import store` still reaches every public name and every module, as before.
    code = (
        "import sys, store\n"
        "assert 'tensorstore' not in sys.modules\n"
        "assert not hasattr(store, 'no_such_thing')\n"
        "assert store.verify.verify_store.__module__ == 'store.verify'\n"
        "from store import StoreReader, StoreSchema, create_store, StorageAccessError\n"
        "assert StoreReader.__module__ == 'store.reader' and 'tensorstore' in sys.modules\n"
        "print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--parallel", "0"], "error: --parallel 0 must be >= 1"),
        (["--evaluate", "heldout"], "error: --evaluate heldout needs --eval-store HELDOUT_STORE"),
    ],
)
def test_sweep_argument_errors_need_no_heavy_import(tmp_path, argv, message):
    # Checked before the trainer's config (and JAX) load: one line, exit 2, at once.
    argv = ["--config", "tiny:kd", "--out", str(tmp_path / "sw"), *argv]
    code = (
        "import sys; from trainer.sweep import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, sorted(m for m in ('jax', 'apache_beam', 'tensorstore') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.stdout.strip() == "2 []", proc.stderr[-2000:]
    assert proc.stderr.strip() == message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "nosuch"], "error: unknown task 'nosuch'; use one of"),
        (["--tasks", "heldout"], "error: task 'heldout' needs a tokens store; pass --store URL"),
        (["--tasks", "piqa"], "error: tasks ['piqa'] encode text; pass --tokenizer"),
        (["--task-file", "piqa"], "error: --task-file 'piqa' is not TASK=PATH"),
        (["--docs", "{tmp}/none*.txt"], "error: --docs '{tmp}/none*.txt' matches no files"),
        (["--checkpoint", "{tmp}/nope", "--tasks", "heldout", "--store", "s"], "error: checkpoint"),
    ],
)
def test_evaluate_argument_errors_need_no_heavy_import(tmp_path, argv, message):
    # Checked before the engine (JAX, orbax) loads: one line, exit 2, at once.
    argv = ["--checkpoint", str(tmp_path)] + [a.format(tmp=tmp_path) for a in argv]
    code = (
        "import sys; from trainer.evaluate.__main__ import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, sorted(m for m in ('jax', 'orbax', 'tensorstore') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.stdout.strip() == "2 []", proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith(message.format(tmp=tmp_path)) and "\n" not in err, err
