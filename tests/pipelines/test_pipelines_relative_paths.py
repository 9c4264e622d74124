"""The README's dump path, copy-paste style: relative paths only, from a directory outside the checkout.

Issue 15: every model checkpoint read broke on relative paths (Orbax wants
absolute ones) and shell-expanded globs lost files. This runs the real CLI in
a subprocess whose working directory is an empty temp dir holding only the
user's files, then inspects the store it wrote there.
"""

import os
import shutil
import subprocess
import sys

import pipelines_testlib as lib

import store


def test_dump_with_relative_paths_from_outside_the_checkout(
    corpus, tokenizer_path, teacher_path, tmp_path
):
    directory, docs = corpus
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    for name in sorted(os.listdir(directory)):
        shutil.copy(os.path.join(directory, name), work / "in" / name)
    shutil.copy(tokenizer_path, work / "tok.model")
    shutil.copytree(teacher_path, work / "ckpt")
    inputs = sorted(os.path.join("in", n) for n in os.listdir(work / "in"))
    assert len(inputs) >= 2, "the shell-glob case needs several files"
    # As the shell passes an unquoted `in/*`: one argument per file.
    argv = [
        "--input",
        *inputs,
        "--store",
        "st",
        "--teacher",
        "ckpt",
        "--tokenizer",
        "tok.model",
        "--seq-len",
        str(lib.SEQ_LEN),
        "--k",
        str(lib.K),
        "--rows-per-unit",
        str(lib.ROWS_PER_UNIT),
        "--batch-size",
        str(lib.BATCH),
        "--progress-interval",
        "0",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.dump", *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reader = store.StoreReader(str(work / "st"))
    assert reader.num_rows > 0 and len(reader.committed_units) == reader.num_units
    # Every input file was read: the store holds the tokens of all documents.
    assert f"documents={len(docs)}" in done.stdout + done.stderr
    check = subprocess.run(
        [sys.executable, "-m", "store", "verify", "st"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
