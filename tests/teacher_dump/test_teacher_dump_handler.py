"""TeacherModelHandler inside a small DirectRunner RunInference pipeline."""

import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that

import teacher_dump
from pipelines import teacher_handler as handler_lib
from teacher_dump import loop
from trainer.model.errors import ConfigError, ModelInputError

K = 8


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt):
    return tiny_ckpt[0]


def _units(cfg):
    rng = np.random.default_rng(5)
    return [
        (u, rng.integers(0, cfg.vocab_size, (rows, 16), dtype=np.int32))
        for u, rows in ((0, 4), (1, 4), (7, 3))
    ]


@pytest.mark.slow  # a fresh interpreter importing JAX + Orbax: ~15 s here
def test_import_teacher_dump_does_not_import_beam():
    # The Beam handler lives in pipelines; tests/test_import_graph.py checks the
    # source, this checks what an import really loads.
    code = "import sys, teacher_dump; assert 'apache_beam' not in sys.modules, 'beam imported'"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=os.path.dirname(os.path.dirname(teacher_dump.__file__)),
    )


def test_run_inference_pipeline(ckpt):
    teacher = teacher_dump.load_teacher(ckpt)
    units = _units(teacher.cfg)
    expected = {
        u: loop.concat_batches(teacher_dump.extract_rows(teacher, t, batch_size=8, k=K))
        for u, t in units
    }
    handler = handler_lib.TeacherModelHandler(ckpt, k=K, batch_size=8)

    def check(outputs):
        assert sorted(u for u, _, _ in outputs) == [0, 1, 7]
        inputs = dict(units)
        for u, tokens, unit_signal in outputs:
            signal = unit_signal.values  # a pipelines.unit_signal.HostSignal: write_unit's kwargs
            np.testing.assert_array_equal(tokens, inputs[u])
            assert signal["topk_ids"].shape == tokens.shape + (K,)
            assert signal["topk_logprobs"].dtype == np.float32
            assert set(signal["hidden"]) == {1}
            np.testing.assert_array_equal(signal["topk_ids"], expected[u]["topk_ids"])
            np.testing.assert_allclose(
                signal["topk_logprobs"], expected[u]["topk_logprobs"], rtol=2e-6
            )
            np.testing.assert_allclose(
                signal["hidden"][1], expected[u]["hidden"][1], rtol=0, atol=1e-5
            )

    with beam.Pipeline("DirectRunner") as p:
        # One element per call: the pipeline batches units itself (two calls here).
        out = p | beam.Create([units[:2], units[2:]]) | RunInference(handler)
        assert_that(out, check)


def test_run_inference_direct_call_and_bad_elements(ckpt):
    handler = handler_lib.TeacherModelHandler(ckpt, k=K, batch_size=8)
    assert handler.should_skip_batching()  # RunInference's BatchElements is not used
    teacher = handler.load_model()
    ((unit, tokens, signal),) = handler.run_inference([(3, _units(teacher.cfg)[2][1])], teacher)
    assert unit == 3 and signal.values["topk_ids"].shape == (3, 16, K)
    with pytest.raises(ModelInputError, match="unit_index, tokens_RxT"):
        handler.run_inference([np.zeros((2, 16), np.int32)], teacher)
    with pytest.raises(ModelInputError, match="unit 4: tokens must be"):
        handler.run_inference([(4, np.zeros((16,), np.int32))], teacher)
    with pytest.raises(ModelInputError, match="different seq_len"):
        handler.run_inference(
            [(0, np.zeros((1, 16), np.int32)), (1, np.zeros((1, 8), np.int32))], teacher
        )
    with pytest.raises(ModelInputError, match="no inference_args"):
        handler.validate_inference_args({"x": 1})


class _MethodsOnly:
    """Like Beam's multi-process proxy: forwards method calls, hides attributes."""

    def __init__(self, teacher):
        self._extract = teacher.extract

    def extract(self, *args, **kwargs):
        return self._extract(*args, **kwargs)


def test_run_inference_through_a_methods_only_proxy(ckpt):
    handler = handler_lib.TeacherModelHandler(ckpt, k=K, batch_size=8, share_across_processes=True)
    assert handler.share_model_across_processes()
    teacher = handler.load_model()
    tokens = _units(teacher.cfg)[0][1]
    ((_, _, via_proxy),) = handler.run_inference([(0, tokens)], _MethodsOnly(teacher))
    ((_, _, direct),) = handler.run_inference([(0, tokens)], teacher)
    np.testing.assert_array_equal(via_proxy.values["topk_ids"], direct.values["topk_ids"])


def test_bad_options_fail_at_load(ckpt):

    with pytest.raises(ConfigError, match="layer 9"):
        handler_lib.TeacherModelHandler(ckpt, k=K, layers=(9,)).load_model()


def test_sampled_draws_are_keyed_by_global_store_rows(ckpt):
    handler = handler_lib.TeacherModelHandler(ckpt, k=0, batch_size=8, samples=4, rows_per_unit=4)
    teacher = handler.load_model()
    units = _units(teacher.cfg)  # units 0, 1 and 7 (3 rows: the last, short one)
    outputs = handler.run_inference(units, teacher)
    for (u, tokens), (_, _, unit_signal) in zip(units, outputs):
        signal = unit_signal.values
        assert "topk_ids" not in signal
        want = loop.concat_batches(
            teacher_dump.extract_rows(
                teacher,
                tokens,
                batch_size=8,
                k=0,
                samples=4,
                row_ids=4 * u + np.arange(len(tokens)),
            )
        )
        for name in ("sampled_ids", "sampled_counts", "sampled_logprobs"):
            np.testing.assert_array_equal(signal[name], want[name])
    with pytest.raises(ModelInputError, match="more than rows_per_unit=4"):
        handler.run_inference([(0, np.zeros((5, 16), np.int32))], teacher)

    with pytest.raises(ConfigError, match="pass rows_per_unit"):
        handler_lib.TeacherModelHandler(ckpt, samples=4)
