"""`python -m pipelines.dump` flags: refused mistakes, wired options, storage failures."""

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pipelines_testlib as lib
import pytest
from apache_beam.options.pipeline_options import StandardOptions

import pipelines  # noqa: F401  (installs the apitools log filter)
import store
from pipelines import dump, errors, options
from pipelines.errors import OptionsError


def _files(directory):
    return sorted(os.path.join(directory, name) for name in os.listdir(directory))


def _cli(capsys, argv):
    rc = dump.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.strip().splitlines()


def test_input_takes_the_files_of_a_shell_expanded_glob(
    corpus, tokenizer_path, teacher_path, tmp_path
):
    directory, _ = corpus
    files = _files(directory)
    argv = lib.dump_argv(files[0], str(tmp_path / "s"), teacher_path, tokenizer_path)
    i = argv.index("--input")
    argv[i + 2 : i + 2] = files[1:]  # what `--input dir/*` becomes after the shell
    _, plan, _ = dump.build_pipeline(argv)
    assert plan.paths == files and len(files) == 3


def test_unknown_arguments_are_refused_with_one_line(
    corpus, tokenizer_path, teacher_path, tmp_path, capsys
):
    directory, _ = corpus
    files = _files(directory)
    url = str(tmp_path / "s")
    # The shell's second file lands after a flag that takes one value.
    argv = lib.dump_argv(files[0], url, teacher_path, tokenizer_path) + [
        "--seq-len",
        "32",
        files[1],
    ]
    rc, _, err = _cli(capsys, argv)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: unknown argument '{files[1]}'")
    assert "--input '/dir/*.txt'" in err[0]
    rc, _, err = _cli(
        capsys, lib.dump_argv(files[0], url, teacher_path, tokenizer_path, "--rows-per-unti", "8")
    )
    assert rc == 2 and err == [
        "error: unknown argument '--rows-per-unti' (and 1 more); see "
        "`python -m pipelines.dump --help` and Beam's runner flags"
    ]
    assert not os.path.exists(url)


def test_teacher_flags_without_teacher_are_refused(corpus, tokenizer_path, tmp_path, capsys):
    directory, _ = corpus
    url = str(tmp_path / "s")
    base = [
        "--input",
        os.path.join(directory, "*"),
        "--store",
        url,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
    ]
    for flag, value in (
        ("--k", "8"),
        ("--profile", "compact"),
        ("--top-p", "0.9"),
        ("--teacher-dtype", "bfloat16"),
        ("--batch_size", "4"),
        ("--units-per-call", "2"),
    ):
        rc, _, err = _cli(capsys, base + [flag, value])
        assert rc == 2 and len(err) == 1
        assert err[0] == (
            f"error: {flag.replace('_', '-')} only apply with --teacher (without "
            "it the store holds tokens only); pass --teacher CKPT or drop them"
        )
    with pytest.raises(OptionsError, match="^--k --profile only apply"):
        options.parse(base + ["--profile=exact", "--k", "8"])
    assert not os.path.exists(url)


def test_help_shows_defaults(capsys):
    assert dump.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "rows per work unit (the commit / resume granularity) (default: 64)" in " ".join(
        out.split()
    )
    assert "(default: 128)" in out and "--runner dask" in out


def test_runner_alias_and_handler_flags(corpus, tokenizer_path, teacher_path, tmp_path):
    directory, _ = corpus
    argv = lib.dump_argv(
        os.path.join(directory, "*"),
        str(tmp_path / "s"),
        teacher_path,
        tokenizer_path,
        "--runner",
        "dask",
        "--dask_client_address",
        "127.0.0.1:1",
        "--num-devices",
        "0",
        "--token-tile",
        "512",
        "--units-per-call",
        "3",
        "--share-across-processes",
    )
    pipeline_options, opts = options.parse(argv)
    assert pipeline_options.view_as(StandardOptions).runner == (
        "apache_beam.runners.dask.dask_runner.DaskRunner"
    )
    _, plan, opts = dump.build_pipeline(argv)
    handler = dump._handler(opts, plan)
    assert (handler._num_devices, handler._token_tile, handler.share_model_across_processes()) == (
        None,
        512,
        True,
    )
    assert opts.units_per_call == 3
    from teacher_dump import extract

    assert (
        options.DumpOptions.from_dictionary({}).view_as(options.DumpOptions).token_tile
        == extract.DEFAULT_TOKEN_TILE
    )


def test_apitools_warning_is_dropped(caplog):
    with caplog.at_level(logging.WARNING):
        logging.warning("apitools not found, and bigquery client libraries are not available")
        logging.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_teacher_without_fingerprint_is_refused(corpus, tokenizer_path, teacher_path, tmp_path):
    directory, _ = corpus
    teacher = str(tmp_path / "teacher")
    shutil.copytree(teacher_path, teacher)
    path = os.path.join(teacher, "metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    del metadata["fingerprint"]
    with open(path, "w") as f:
        json.dump(metadata, f)
    argv = lib.dump_argv(os.path.join(directory, "*"), str(tmp_path / "s"), teacher, tokenizer_path)
    with pytest.raises(ValueError, match="metadata.json has no params fingerprint"):
        dump.build_pipeline(argv)


def test_tiny_heldout_split_is_warned_about():
    counters = {"heldout_documents": 7, "documents": 65, "heldout_rows": 32, "heldout_tokens": 1024}
    line = dump.heldout_warning(counters)
    assert line.startswith("warning: the held-out split has 7 documents of 72 (1024 tokens)")
    assert (
        dump.heldout_warning({"heldout_documents": 900, "documents": 9000, "heldout_tokens": 10**6})
        is None
    )
    assert dump.heldout_warning({"units_committed": 3}) is None  # no held-out split


def _no_space_after(monkeypatch, ok_units):
    """Every write_unit after the first `ok_units` fails as TensorStore does on a full disk."""
    real = store.StoreWriter.write_unit
    calls = []

    def write_unit(self, unit, *args, **kwargs):
        calls.append(unit)
        if len(calls) > ok_units:
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing local file "{self.url}tokens/c/{unit}/0": '
                "Failed to write 36888 bytes to file 3: No space left on device "
                "[os_error_code='28']"
            )
        return real(self, unit, *args, **kwargs)

    monkeypatch.setattr(store.StoreWriter, "write_unit", write_unit)


def test_disk_full_during_a_dump_is_one_line_and_resumes(
    corpus, tokenizer_path, tmp_path, capsys, monkeypatch
):
    directory, docs = corpus
    url = str(tmp_path / "s")
    argv = [
        "--input",
        os.path.join(directory, "*"),
        "--store",
        url,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
        "--rows-per-unit",
        "8",
        "--progress-interval",
        "0",
    ]
    _no_space_after(monkeypatch, 3)
    rc, _, err = _cli(capsys, argv)
    total = store.open_writer(url).num_units
    assert rc == 2 and len(err) == 1, err
    assert (
        err[0].startswith("error: writing unit ") and " failed: no space left on device; " in err[0]
    )
    assert err[0].endswith(
        f"3/{total} units of {url} are committed; fix the storage and re-run "
        "the same command to resume"
    )
    monkeypatch.undo()
    assert dump.main(argv) == 0
    rows = lib.reference_rows(docs, tokenizer_path)
    reader = store.StoreReader(url)
    np.testing.assert_array_equal(
        reader.read(np.arange(len(rows)), fields=("tokens",))["tokens"], rows
    )


def test_storage_failures_are_named():
    assert errors.storage_failure(OSError(30, "Read-only file system")) == "read-only file system"
    assert (
        errors.storage_failure(
            ValueError(
                'PERMISSION_DENIED: Failed to create directory: "/x": Permission denied '
                "[os_error_code='13']"
            )
        )
        == "permission denied"
    )
    assert errors.storage_failure(ValueError("a bug")) is None


def test_more_input_into_an_existing_store_names_the_supported_path(
    corpus, tokenizer_path, tmp_path, capsys
):
    directory, _ = corpus
    files = _files(directory)
    url = str(tmp_path / "s")
    argv = [
        "--store",
        url,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
        "--progress-interval",
        "0",
    ]
    assert dump.main(["--input", files[0]] + argv) == 0
    before = lib.store_arrays(url)
    capsys.readouterr()
    rc, _, err = _cli(capsys, ["--input", *files] + argv)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: store {url} holds ")
    assert (
        "a store is never appended to; to add text, dump only the new files to a second "
        f"store with the same flags: python -m pipelines.dump --input NEW_FILES --store {url}_2"
        in err[0]
    )
    after = lib.store_arrays(url)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)


def _unshare_mount_works():
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("unshare") is None or not _unshare_mount_works(),
    reason="needs unshare -rm to mount a size-limited tmpfs",
)
@pytest.mark.parametrize(
    "mount,failure", [("size=160k", "no space left on device"), ("ro", "read-only file system")]
)
def test_real_full_or_read_only_store_path(corpus, tokenizer_path, tmp_path, mount, failure):
    """The dump CLI on a real tmpfs (own mount namespace): tiny, or read-only."""
    import clusters

    directory, _ = corpus
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    url = str(mnt / "s")
    argv = [
        "--input",
        os.path.join(directory, "*"),
        "--store",
        url,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
        "--rows-per-unit",
        "2",
        "--progress-interval",
        "0",
    ]
    script = (
        f"mount -t tmpfs -o {mount} tmpfs {mnt} && "
        f"{shlex.quote(sys.executable)} -m pipelines.dump {shlex.join(argv)}"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=clusters.ROOT,
        env=clusters.loopback_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"failed: {failure}; " in err[0] and err[0].endswith(
        "fix the storage and re-run the same command to resume"
    ), err[0]
