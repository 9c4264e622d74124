"""trainer.training.metrics: progress lines, and a resumed run's rows logged once."""

import io
import json

from trainer.training import metrics


def _lines(tmp_path, num_phases):
    stream = io.StringIO()
    writer = metrics.MetricsWriter(
        str(tmp_path), 10, enabled=True, stream=stream, num_phases=num_phases
    )
    writer.write(1, {"phase": 1, "loss": 2.0})
    writer.close()
    return stream.getvalue().splitlines()


def test_progress_line_names_the_phase_only_for_two_phase_methods(tmp_path):
    (nll,) = _lines(tmp_path / "nll", num_phases=1)
    assert nll.startswith("step 1/10 | loss 2.0000") and "phase" not in nll
    (hldf,) = _lines(tmp_path / "hldf", num_phases=2)
    assert hldf.startswith("step 1/10 | phase 1/2 | loss 2.0000")


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in (1, 2, 3))
        + '{"step": 4, "lo'
    )  # torn by a kill
    writer = metrics.MetricsWriter(
        str(tmp_path), 10, enabled=True, stream=io.StringIO(), resume_step=2
    )
    writer.write(3, {"loss": 30.0})
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
