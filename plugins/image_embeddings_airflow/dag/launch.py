"""How a run plan becomes a Beam launch: runner, pipeline options, Dataflow config, wait mode."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PIPELINE_MODULE = "beam_jobs.image_embeddings"
PREPARE_MODULE = "beam_jobs.image_embeddings.engine.prepare"
ANALYSIS_MODULE = "beam_jobs.image_embeddings.analysis"
DATAFLOW_RUNNER = "DataflowRunner"
# Seconds the launcher waits for a cancelled job to stop, and between job state polls.
CANCEL_TIMEOUT_S = 300
POLL_SLEEP_S = 30
# Run plan entries that go to the pipeline as the same-named options (`--batch_size 32`).
JOB_OPTIONS = (
    "model",
    "weights",
    "batch_size",
    "engine",
    "precision",
    "embedding_dtype",
    "num_shards",
    # The launcher reuses embeddings of the finished days before it with the same model.
    "lookback_days",
)
# Run plan entries that go to the analysis job as the same-named options.
ANALYSIS_OPTIONS = (
    "pca_components",
    "pca_sample_size",
    "duplicate_threshold",
    "lookback_days",
    "drift_reference_days",
    "drift_threshold",
)


class WaitMode(enum.Enum):
    """What `wait` does after `embed` returns."""

    DATAFLOW_JOB = (
        "dataflow_job"  # the launch returned at submission: poll the job, then the marker
    )
    SUCCESS_MARKER = "success_marker"  # the run finished in `embed`: confirm its marker


def wait_mode(runner: str) -> WaitMode:
    """Dataflow jobs outlive the launch and are waited for; every local runner has finished."""
    return WaitMode.DATAFLOW_JOB if runner == DATAFLOW_RUNNER else WaitMode.SUCCESS_MARKER


def dataflow_job_name(dag_id: str, day: str, step: str | None = None) -> str:
    """One Dataflow job name per DAG, day and step (`image-embeddings-20261128`,
    `image-embeddings-analysis-20261128`): retries find it."""
    parts = (dag_id, step, day.replace("-", "")) if step else (dag_id, day.replace("-", ""))
    return "-".join(parts).replace("_", "-").lower()


def console_url(project: str | None, location: str | None, job_id: str) -> str:
    """The Cloud console page of a Dataflow job."""
    return f"https://console.cloud.google.com/dataflow/jobs/{location}/{job_id}?project={project}"


@dataclass(frozen=True)
class Launch:
    """Arguments of the Beam operator for one run."""

    runner: str
    pipeline_options: dict[str, Any]
    dataflow_config: dict[str, Any] | None


def _present(options: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if value is not None}


def preparation_options(plan: Mapping[str, Any], manifest: str) -> dict[str, Any]:
    """The options of `python -m beam_jobs.image_embeddings.engine.prepare` for a run plan."""
    return _present(
        {
            "model": plan["model"],
            "weights": plan["weights"],
            "precision": plan["precision"],
            "model_cache": plan["model_cache"],
            # int8 calibrates on the configured manifest, else on a sample of the day's images.
            "manifest": manifest,
            "calibration_manifest": plan["calibration_manifest"],
            "min_centred_cosine_mean": plan["int8_min_centred_cosine_mean"],
            "min_centred_cosine": plan["int8_min_centred_cosine"],
            "min_top5_overlap": plan["int8_min_top5_overlap"],
        }
    )


def command_line(options: Mapping[str, Any]) -> list[str]:
    """`--name=value` arguments of an options mapping, in its order."""
    return [f"--{name}={value}" for name, value in options.items()]


def pipeline_options(
    plan: Mapping[str, Any], manifest: str, prepared_model: str | None = None
) -> dict[str, Any]:
    """The pipeline's command-line options (without runner, project, region and job name,
    which the operator adds from the Dataflow configuration)."""
    options = (
        {
            "manifest": manifest,
            "output": plan["output_dir"],
            # Entries outside the day's input folder are failures, never opened.
            "input_root": plan["input_dir"],
        }
        | {name: plan[name] for name in JOB_OPTIONS}
        | _present({"prepared_model": prepared_model})
    )
    return options | worker_options(plan)


def analysis_options(
    plan: Mapping[str, Any], embedding_job_url: str | None = None
) -> dict[str, Any]:
    """The analysis job's command-line options, on the same workers as the pipeline; the
    embedding job's console page goes into the report."""
    options = {"output": plan["output_dir"]} | {name: plan[name] for name in ANALYSIS_OPTIONS}
    return options | _present({"embedding_job_url": embedding_job_url}) | worker_options(plan)


def worker_options(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Where and on what a Dataflow job runs; nothing for a local runner."""
    if plan["runner"] != DATAFLOW_RUNNER:
        return {}
    image = plan["dataflow_sdk_container_image"]
    return _present(
        {
            "temp_location": plan["dataflow_temp_location"],
            "staging_location": plan["dataflow_staging_location"],
            "machine_type": plan["dataflow_machine_type"],
            "max_num_workers": plan["dataflow_max_workers"],
            "sdk_container_image": image,
            # A custom image already holds Beam: staging the SDK would need a download.
            "sdk_location": "container" if image else None,
            "setup_file": None if image else plan["dataflow_setup_file"],
            "network": plan["dataflow_network"],
            "subnetwork": plan["dataflow_subnetwork"],
        }
    )


def dataflow_config(
    plan: Mapping[str, Any], dag_id: str, step: str | None = None
) -> dict[str, Any]:
    """Keyword arguments of the provider's `DataflowConfiguration` for a Dataflow run."""
    return {
        "job_name": dataflow_job_name(dag_id, plan["day"], step),
        "append_job_name": False,
        "project_id": plan["gcp_project"],
        "location": plan["gcp_region"],
        "gcp_conn_id": plan["gcp_conn_id"],
        "service_account": plan["dataflow_service_account"],
        # `wait` polls the job from the triggerer; the launch holds no worker slot meanwhile.
        "wait_until_finished": False,
        "cancel_timeout": CANCEL_TIMEOUT_S,
        "poll_sleep": POLL_SLEEP_S,
    }


def launch(
    plan: Mapping[str, Any], manifest: str, dag_id: str, prepared_model: str | None = None
) -> Launch:
    """The Beam operator's arguments for a run plan, its staged manifest and prepared model."""
    is_dataflow = wait_mode(plan["runner"]) is WaitMode.DATAFLOW_JOB
    return Launch(
        runner=plan["runner"],
        pipeline_options=pipeline_options(plan, manifest, prepared_model),
        dataflow_config=dataflow_config(plan, dag_id) if is_dataflow else None,
    )


def analysis_launch(
    plan: Mapping[str, Any], dag_id: str, embedding_job_url: str | None = None
) -> Launch:
    """The Beam operator's arguments for the day's analysis job."""
    is_dataflow = wait_mode(plan["runner"]) is WaitMode.DATAFLOW_JOB
    return Launch(
        runner=plan["runner"],
        pipeline_options=analysis_options(plan, embedding_job_url),
        dataflow_config=dataflow_config(plan, dag_id, "analysis") if is_dataflow else None,
    )
