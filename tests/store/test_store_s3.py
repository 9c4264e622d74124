"""s3:// stores against a real S3-compatible server (moto) on loopback, started by the tests.

The endpoint comes from AWS_ENDPOINT_URL as the AWS SDKs take it; every test
runs with HTTP(S)_PROXY at a dead loopback port (only 127.0.0.1 exempt), so
nothing can leave the machine.
"""

import os
import subprocess
import sys
import textwrap

import boto3
import numpy as np
import pytest
from s3_loopback import (
    FaultProxy,
    make_bucket,
    moto_server,
    s3_env,
)  # bench/, via tests/conftest.py
from store_testlib import check_round_trip, write_synth

from store import StoreReader, cli, errors, open_writer
from store.verify import verify_store

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def moto():
    with moto_server() as endpoint:
        make_bucket(endpoint, "bkt")
        yield endpoint


@pytest.fixture
def s3(moto, monkeypatch, request):
    """Points the AWS variables at the moto server; yields (endpoint, a fresh s3:// URL)."""
    env = s3_env(moto)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return moto, f"s3://bkt/{request.node.name.replace('[', '_').replace(']', '')}"


def _client(endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _objects(endpoint, prefix) -> dict:
    """{relative key: bytes} of every object under s3://bkt/prefix/."""
    c = _client(endpoint)
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"][len(prefix) + 1 :]] = c.get_object(Bucket="bkt", Key=o["Key"])[
                "Body"
            ].read()
    return out


def _fill(url, make_schema, num_rows=10, seed=0, units=None, **kw):
    return write_synth(url, make_schema(**kw), num_rows, seed, units)


def test_s3_write_read_inspect_verify_stats(s3, make_schema, capsys):
    _, url = s3
    check_round_trip(url, make_schema(), capsys)


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {here!r})
    import store
    from store import ledger, open_writer
    from store_testlib import synth_unit
    url, units, kill_at = sys.argv[1], [int(u) for u in sys.argv[2].split(',')], int(sys.argv[3])
    w = open_writer(url)
    real_write = ledger.write
    def write(kv, record):
        if record["unit"] == kill_at:  # arrays written, record not: die as a SIGKILL would leave it
            import os, signal; os.kill(os.getpid(), signal.SIGKILL)
        real_write(kv, record)
    ledger.write = write
    rng = np.random.default_rng(0)
    for u in range(w.num_units):
        a, b = w.unit_rows(u)
        d = synth_unit(rng, b - a, w.schema)
        if u in units:
            w.write_unit(u, **d)
""")


def _run_writer(url, units, kill_at=-1):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WRITER.format(here=HERE),
            url,
            ",".join(map(str, units)),
            str(kill_at),
        ],
        env=os.environ.copy(),
    )


def test_s3_two_writers_then_killed_writer_resumes_byte_identically(s3, make_schema):
    endpoint, url = s3
    ref_url = url + "_ref"
    _fill(ref_url, make_schema, num_rows=24)  # uninterrupted reference, same seed
    _fill(url, make_schema, num_rows=24, units=())  # created, nothing written
    a, b = _run_writer(url, [0, 2, 4]), _run_writer(url, [1, 3])  # two writers at once
    assert a.wait(120) == 0 and b.wait(120) == 0
    assert open_writer(url).committed_units() == {0, 1, 2, 3, 4}
    killed = _run_writer(url, [5], kill_at=5)
    assert killed.wait(120) == -9
    report = verify_store(url)
    assert [(x["unit"], x["status"]) for x in report["bad_units"]] == [(5, "partial")]
    assert _run_writer(url, [5]).wait(120) == 0  # the same command again
    assert verify_store(url)["ok"]
    ours, ref = (
        _objects(endpoint, url[len("s3://bkt/") :]),
        _objects(endpoint, ref_url[len("s3://bkt/") :]),
    )
    for key in ("zarr.json", "ledger/manifest/zarr.json"):  # the manifest's creation time differs
        ref.pop(key), ours.pop(key)
    assert ours.keys() == ref.keys() and all(ours[k] == ref[k] for k in ref)


def test_s3_flipped_byte_found_by_verify(s3, make_schema, capsys):
    endpoint, url = s3
    _fill(url, make_schema)
    key = url[len("s3://bkt/") :] + "/hidden/2/c/1/0/0"
    c = _client(endpoint)
    blob = bytearray(c.get_object(Bucket="bkt", Key=key)["Body"].read())
    blob[len(blob) // 3] ^= 0x40
    c.put_object(Bucket="bkt", Key=key, Body=bytes(blob))
    assert cli.main(["verify", url]) == 1
    out = capsys.readouterr().out
    assert "unit 1 rows 4..8: corrupt" in out


def test_s3_missing_shard_object_is_an_error_never_zeros(s3, make_schema, capsys):
    """TensorStore reads a missing chunk object as the fill value unless told otherwise (zeros to a student)."""
    endpoint, url = s3
    _fill(url, make_schema)
    _client(endpoint).delete_object(Bucket="bkt", Key=url[len("s3://bkt/") :] + "/hidden/2/c/1/0/0")
    reader = StoreReader(url)
    assert reader.read(np.arange(0, 4))["tokens"].shape == (4, 16)  # other units still read
    with pytest.raises(
        errors.CorruptStoreError, match=r"array hidden/2 of unit 1 .* is missing.*store repair"
    ):
        reader.read(np.arange(3, 6))
    with pytest.raises(errors.CorruptStoreError, match=r"array hidden/2 of unit 1 "):
        reader.read_stored([5], ["hidden/2"])
    assert cli.main(["verify", url]) == 1
    assert "unit 1 rows 4..8: corrupt" in capsys.readouterr().out


def test_zarr_python_reads_remote_store_via_s3fs(s3, make_schema):
    import zarr

    endpoint, url = s3
    _, data = _fill(url, make_schema, num_rows=8)
    g = zarr.open_group(
        url,
        mode="r",
        storage_options={
            "endpoint_url": endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        },
    )
    assert dict(g.attrs)["schema"]["profile"] == "exact"
    np.testing.assert_array_equal(g["tokens"][:][4:8], data[1]["tokens"])
    # The exact profile's rules (manifest "encodings"): hidden = float16 direction * float32 per-token RMS.
    h = g["hidden/2"][:].astype(np.float64) * g["hidden_aux/2/rms"][:].astype(np.float64)[..., None]
    ref = data[0]["hidden"][2].astype(np.float64)
    np.testing.assert_allclose(h[:4], ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    lp = g["topk/logprobs"][:].astype(np.float64)
    np.testing.assert_allclose(lp[:4], data[0]["topk_logprobs"], rtol=1e-3, atol=1e-3)


def _cli_error(argv, capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_s3_bad_cases_one_line_exit_2(s3, make_schema, monkeypatch, capsys):
    endpoint, url = s3
    err = _cli_error(["inspect", "s3://bkt/nothing-here"], capsys)
    assert "no store at s3://bkt/nothing-here/" in err
    _client(endpoint).put_object(Bucket="bkt", Key="junk/zarr.json", Body=b"not json")
    assert "is not valid JSON" in _cli_error(["verify", "s3://bkt/junk"], capsys)
    assert "bucket does not exist" in _cli_error(["inspect", "s3://no-such-bucket/s"], capsys)
    dead = s3_env(endpoint)["HTTP_PROXY"]  # a loopback port nobody listens on
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    err = _cli_error(["inspect", url], capsys)
    assert "could not be reached" in err and dead in err


def test_s3_wrong_or_no_credentials_one_line(make_schema, monkeypatch, capsys, tmp_path):
    with moto_server(
        {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    ) as endpoint:  # moto checks keys from here on
        for k, v in s3_env(endpoint, key="AKIAWRONGWRONGWRONG0", secret="nope").items():
            monkeypatch.setenv(k, v)
        err = _cli_error(["inspect", "s3://bkt/s"], capsys)
        assert "refused the credentials" in err and "AWS_ACCESS_KEY_ID" in err
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        err = _cli_error(["inspect", "s3://bkt/s"], capsys)
        assert "no AWS credentials found for s3://bkt/s/" in err and "AWS_ACCESS_KEY_ID" in err


def test_s3_transient_faults_retried_units_correct(s3, make_schema):
    endpoint, url = s3
    # Every 5th request answers 503, every 7th drops the connection: TensorStore's retries absorb them.
    fail = lambda i: "503" if i % 5 == 3 else ("drop" if i % 7 == 5 else None)
    with FaultProxy(endpoint, fail) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        try:
            _, data = _fill(url, make_schema, num_rows=12)
        finally:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        assert proxy.requests > 30
    report = verify_store(url)
    assert report["ok"], report
    got = StoreReader(url).read(np.arange(12))
    for u in range(3):
        np.testing.assert_array_equal(got["tokens"][4 * u : 4 * u + 4], data[u]["tokens"])


def test_s3_server_failing_every_write_fails_clearly_never_commits(s3, make_schema):
    endpoint, url = s3
    w, data = _fill(url, make_schema, num_rows=8, units=(0,))
    failing = [False]
    with FaultProxy(endpoint, lambda i: "503" if failing[0] else None) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
        try:
            w = open_writer(url)
            failing[0] = True
            with pytest.raises(
                errors.StorageAccessError, match="writing unit 1 of s3://bkt/.*re-running"
            ):
                w.write_unit(1, **data[1])
        finally:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
    assert open_writer(url).committed_units() == {0}


def test_s3_credentials_from_a_shared_credentials_file(s3, make_schema, monkeypatch, tmp_path):
    endpoint, url = s3
    _fill(url, make_schema, num_rows=4)
    creds = tmp_path / "credentials"
    creds.write_text("[bench]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "bench")
    monkeypatch.setenv(
        "AWS_CONFIG_FILE", str(tmp_path / "no-config")
    )  # a missing config file is fine
    assert StoreReader(url).committed_units == {0}
