"""The dump graph builds unchanged for cluster runners, and our flags pass through."""

import os

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines import dump, options, progress

RUNNERS = {
    "DataflowRunner": [
        "--project",
        "my-proj",
        "--region",
        "us-central1",
        "--temp_location",
        "gs://bucket/tmp",
        "--sdk_container_image",
        "us-docker.pkg.dev/p/r/dump:1",
        "--machine_type",
        "g2-standard-8",
        "--dataflow_service_options",
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
    ],
    "FlinkRunner": [
        "--flink_master",
        "localhost:8081",
        "--environment_type",
        "DOCKER",
        "--environment_config",
        "registry/dump:1",
    ],
    "SparkRunner": [
        "--spark_master_url",
        "spark://host:7077",
        "--environment_type",
        "DOCKER",
        "--environment_config",
        "registry/dump:1",
    ],
}


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_graph_builds_for_cluster_runner(runner, corpus, tokenizer_path, teacher_path, monkeypatch):
    directory, _ = corpus
    # Building the graph must not open the fictional gs:// stores (without a
    # network an open waits on GCS credentials for ever): any open fails here.
    import store

    def no_open(url, *args, **kwargs):
        raise AssertionError(f"build_pipeline(read_ledgers=False) opened the store {url}")

    monkeypatch.setattr(store, "open_writer", no_open)
    monkeypatch.setattr(store, "StoreReader", no_open)
    argv = [
        "--input",
        os.path.join(directory, "*"),
        "--store",
        "gs://bucket/store",
        "--teacher",
        teacher_path,
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "32",
        "--k",
        "8",
        "--hidden-layers",
        "1",
        "2",
        "--profile",
        "compact",
        "--heldout-fraction",
        "0.05",
        "--heldout-store",
        "gs://bucket/heldout",
        "--runner",
        runner,
        *RUNNERS[runner],
    ]
    # No ledger read: the gs:// stores are fictional.
    pipeline, plan, opts = dump.build_pipeline(argv, read_ledgers=False)
    # Translating to the portable proto is what every runner submits; it must
    # not need the cluster, the store or the teacher's weights.
    proto = pipeline.to_runner_api()
    names = {t.unique_name for t in proto.components.transforms.values()}
    for step in (
        "ReadSpine/ReadTokenize",
        "PackUnits/PrepareStore",
        "PackUnits/GroupByUnit",
        "TeacherSignal/Teacher",
        "TeacherSignal/WriteUnit",
        "WriteHeldout/WriteUnit",
    ):
        assert step in names, step
    assert type(pipeline.runner).__name__ == runner
    assert pipeline.options.view_as(StandardOptions).runner == runner
    mine = pipeline.options.view_as(options.DumpOptions)
    assert (mine.store, mine.seq_len, mine.k, mine.hidden_layers, mine.profile) == (
        "gs://bucket/store",
        32,
        8,
        [1, 2],
        "compact",
    )
    assert plan.schema.hidden_layers == (1, 2) and plan.schema.profile == "compact"
    if runner == "DataflowRunner":
        assert pipeline.options.view_as(GoogleCloudOptions).project == "my-proj"
        assert pipeline.options.view_as(WorkerOptions).sdk_container_image.endswith("dump:1")
        assert (
            "worker_accelerator"
            in pipeline.options.view_as(GoogleCloudOptions).dataflow_service_options[0]
        )
    else:
        assert pipeline.options.view_as(PortableOptions).environment_type == "DOCKER"
    # Remote workers get options re-serialised with underscore names; they parse back.
    flags = pipeline.options.get_all_options(drop_default=True)
    round_trip = options.DumpOptions.from_dictionary(flags).view_as(options.DumpOptions)
    assert (round_trip.seq_len, round_trip.heldout_store) == (32, "gs://bucket/heldout")


def test_progress_line_format():
    line = progress.format_progress("dump", 12, 40, 10, 5.0, 2048)
    assert line == "dump: 12/40 units (30.0%) | 2.00 units/s 4.1k tok/s | ETA 14s"
    assert "waiting" in progress.format_progress("dump", 0, 40, 0, 0.0, 2048)
