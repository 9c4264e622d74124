"""Shared test set-up.

Tests run on CPU. Multi-device tests simulate 8 devices; the flag must be set
before JAX initialises its backends, so it is set here for the whole session
(single-device tests just use device 0).

bench/ is not a package; its loopback S3 helpers (``bench/s3_loopback.py``,
shared by the S3 tests and ``bench/ledger_bench.py``) are imported by name, so
the directory goes on the path here, once, rather than in each test file.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def wiki_tokenizer(tmp_path_factory):
    """(documents, tokenizer path): the demo corpus (real text) and a 600-piece
    SentencePiece model trained on its first 300 documents; later documents are
    unseen text. Skips when the corpus package is not installed."""
    from scripts import demo_corpus
    from trainer.model.tokenizer import train_tokenizer

    try:
        docs = demo_corpus.load_documents()
    except demo_corpus.CorpusError as e:
        pytest.skip(str(e))
    prefix = tmp_path_factory.mktemp("wiki_tok") / "spm"
    return docs, train_tokenizer(docs[:300], str(prefix), vocab_size=600, num_threads=1)


@pytest.fixture(scope="session")
def gcs_server():
    """A loopback GCS emulator for the whole session, bucket "bkt"; yields its endpoint.

    One per session because TensorStore reads its gcs endpoint once per process.
    """
    from gcs_loopback import gcs_emulator  # bench/

    with gcs_emulator("bkt") as endpoint:
        yield endpoint


@pytest.fixture
def gcs(gcs_server, monkeypatch, tmp_path):
    """This test's environment points gs:// at the session's emulator (and nothing else: no host
    credentials, a dead loopback proxy); yields the endpoint."""
    from gcs_loopback import gcs_env  # bench/

    env = gcs_env(gcs_server, str(tmp_path / "gcloud"))
    env["TENSORSTORE_GCS_HTTP_URL"] = gcs_server  # set here so monkeypatch restores them
    env["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "anonymous"
    for k, v in env.items():
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    return gcs_server
