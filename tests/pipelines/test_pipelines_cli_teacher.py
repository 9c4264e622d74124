"""What `--teacher` accepts, and the dump CLI's behaviour before and after the work.

* a finished trainer run directory is read through its export/ (as
  `trainer.evaluate` and `trainer.export_hf` do); an unfinished one is refused
  with one line saying so;
* a converted Hugging Face teacher records its tokenizer, so a different
  tokenizer of the same size is refused (it used to be accepted);
* `--help` and a bad flag of ours are answered without importing Beam,
  TensorStore or JAX;
* Ctrl-C is one line with the resume hint and exit 130.
"""

import json
import os
import shutil
import subprocess
import sys

import pipelines_testlib as lib
import pytest

from pipelines import dump, options
from pipelines.errors import OptionsError, VocabMismatchError
from trainer.model import hf_export, hf_import, tokenizer


def _run_dir(tmp_path, teacher_path, exported=True):
    """A trainer run directory as trainer.training.loop leaves it (the parts the dump reads)."""
    run = tmp_path / "runs" / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    (run / "config.json").write_text(json.dumps({"run_dir": str(run), "model": {}}))
    if exported:
        shutil.copytree(teacher_path, run / "export")
    return run


def test_a_run_directory_is_read_through_its_export(corpus, tokenizer_path, teacher_path, tmp_path):
    run = _run_dir(tmp_path, teacher_path)
    argv = lib.dump_argv(
        os.path.join(corpus[0], "*"), str(tmp_path / "store"), str(run), tokenizer_path
    )
    _, plan, opts = dump.build_pipeline(argv, read_ledgers=False)
    assert opts.teacher == str(run / "export")
    with open(os.path.join(teacher_path, "metadata.json")) as f:
        assert plan.schema.teacher["fingerprint"] == json.load(f)["fingerprint"]


def test_an_unfinished_run_directory_is_one_line(
    corpus, tokenizer_path, teacher_path, tmp_path, capsys
):
    run = _run_dir(tmp_path, teacher_path, exported=False)
    with pytest.raises(OptionsError, match="no exported model yet.*re-running its"):
        options.teacher_checkpoint(str(run))
    argv = lib.dump_argv(
        os.path.join(corpus[0], "*"), str(tmp_path / "store"), str(run), tokenizer_path
    )
    assert dump.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer run directory" in err[0]
    assert not os.path.exists(tmp_path / "store")


def _other_tokenizer(corpus, tmp_path, vocab_size):
    """A tokenizer of the same size trained on other text: another sha256."""
    docs = lib.random_documents(seed=7, num_docs=80)
    return tokenizer.train_tokenizer(
        iter(docs), str(tmp_path / "other"), vocab_size=vocab_size, num_threads=1
    )


def test_a_converted_hf_teacher_refuses_another_tokenizer_of_its_size(
    corpus, tokenizer_path, teacher_path, tmp_path
):
    # An HF Gemma 3 directory with its tokenizer.model, as the Hub ships it.
    hf_dir = tmp_path / "hf"
    hf_export.export(teacher_path, str(hf_dir))
    shutil.copy(tokenizer_path, hf_dir / "tokenizer.model")
    ckpt = tmp_path / "ckpt"
    hf_import.convert(hf_dir, ckpt)
    store_url = str(tmp_path / "store")
    glob = os.path.join(corpus[0], "*")
    _, plan, _ = dump.build_pipeline(
        lib.dump_argv(glob, store_url, str(ckpt), tokenizer_path), read_ledgers=False
    )
    assert plan.schema.tokenizer["sha256"] == tokenizer.tokenizer_info(tokenizer_path)["sha256"]
    other = _other_tokenizer(corpus, tmp_path, lib.VOCAB)
    assert tokenizer.tokenizer_info(other)["vocab_size"] == lib.VOCAB
    with pytest.raises(VocabMismatchError, match="was trained with tokenizer sha256"):
        dump.build_pipeline(lib.dump_argv(glob, store_url, str(ckpt), other), read_ledgers=False)


def _imported_after(argv):
    code = (
        "import sys; from pipelines import dump; rc = dump.main(sys.argv[1:]); "
        "print([m for m in ('apache_beam', 'tensorstore', 'jax') if m in sys.modules], rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    return proc.stdout.strip().splitlines()[-1], proc.stderr


@pytest.mark.parametrize(
    "argv,rc",
    [
        (["--help"], 0),
        (["--store", "s"], 2),
        (["--input", "x", "--store", "s", "--tokenizer", "t", "--seq-len", "0"], 2),
        (["--input", "x", "--store", "s", "--tokenizer", "t", "--seq-len", "8", "--k", "4"], 2),
    ],
)
def test_help_and_bad_flags_need_no_heavy_import(argv, rc):
    last, err = _imported_after(argv)
    assert last == f"[] {rc}", err


def test_ctrl_c_is_one_line_with_the_resume_hint(
    corpus, tokenizer_path, tmp_path, capsys, monkeypatch
):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(dump, "run_dump", interrupted)
    argv = [
        "--input",
        os.path.join(corpus[0], "*"),
        "--store",
        str(tmp_path / "store"),
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "16",
    ]
    assert dump.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("interrupted: ") and "re-run the same command to resume" in err[0]
    assert f"{tmp_path / 'store'} was not created" in err[0]


def test_ctrl_c_inside_a_dofn_is_the_same_line(
    corpus, tokenizer_path, tmp_path, capsys, monkeypatch
):
    # The DirectRunner re-raises a KeyboardInterrupt from a DoFn as a RuntimeError
    # (seen: "KeyboardInterrupt [while running 'TeacherSignal/Teacher/...']").
    class Pipeline:
        def run(self):
            raise RuntimeError("KeyboardInterrupt [while running 'TeacherSignal/Teacher']")

    argv = [
        "--input",
        os.path.join(corpus[0], "*"),
        "--store",
        str(tmp_path / "store"),
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "16",
        "--progress-interval",
        "0",
    ]
    opts = options.precheck(argv)
    monkeypatch.setattr(dump, "build_pipeline", lambda argv: (Pipeline(), None, opts))
    assert dump.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: "), err
