"""Bounded GCS requests for Beam's gs:// filesystem: a timeout per request, an explicit retry."""

from __future__ import annotations

from typing import Any

from apache_beam.io.gcp import gcsio, gcsio_retry
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.plugin import BeamPlugin
from google.auth.transport.requests import AuthorizedSession

from beam_jobs.image_embeddings.contract import (
    GCS_READ_TIMEOUT_S,
    GCS_RETRY_DEADLINE_S,
    GCS_RETRY_INITIAL_S,
    GCS_RETRY_MAXIMUM_S,
    GCS_RETRY_MULTIPLIER,
)

# As google-cloud-storage's own clients: a credential refresh may take this long.
CREDENTIALS_REFRESH_TIMEOUT_S = 300


class GcsClientOptions(PipelineOptions):
    """How long one GCS request may wait, and how long one operation keeps retrying."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--gcs_timeout_secs",
            type=float,
            default=GCS_READ_TIMEOUT_S,
            help="seconds a GCS request may wait to connect or for the next bytes of its answer "
            "before it is retried (default: %(default)s)",
        )
        parser.add_argument(
            "--gcs_retry_deadline_secs",
            type=float,
            default=GCS_RETRY_DEADLINE_S,
            help="seconds one GCS operation keeps retrying 429, 5xx, timeouts and dropped "
            "connections before it fails (default: %(default)s)",
        )


def bounded_timeout(timeout: Any, limit_s: float) -> float | tuple[float, float]:
    """`timeout` as requests takes it (None, seconds, or (connect, read)), capped at `limit_s`."""
    if timeout is None:
        return limit_s
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (min(connect, limit_s), min(read, limit_s))
    return min(timeout, limit_s)


class BoundedSession(AuthorizedSession):
    """An AuthorizedSession whose requests never wait longer than `timeout_s` for the server.

    google-cloud-storage passes a timeout to each call it makes (60 s by default), and Beam's GCS
    filesystem passes none of its own: capping them here bounds every request, downloads and
    resumable upload chunks included.
    """

    def __init__(self, credentials: Any, timeout_s: float) -> None:
        super().__init__(credentials, refresh_timeout=CREDENTIALS_REFRESH_TIMEOUT_S)
        self.timeout_s = timeout_s

    def request(self, method, url, data=None, headers=None, max_allowed_time=None, **kwargs):
        kwargs["timeout"] = bounded_timeout(kwargs.get("timeout"), self.timeout_s)
        return super().request(
            method, url, data=data, headers=headers, max_allowed_time=max_allowed_time, **kwargs
        )


def _limits(pipeline_options: PipelineOptions | None) -> GcsClientOptions:
    return (pipeline_options or PipelineOptions()).view_as(GcsClientOptions)


_BEAM_CREATE_STORAGE_CLIENT = gcsio.create_storage_client
_BEAM_GET_RETRY = gcsio_retry.get_retry


def create_storage_client(pipeline_options: PipelineOptions, use_credentials: bool = True):
    """Beam's storage client, with every request bounded by `--gcs_timeout_secs`."""
    client = _BEAM_CREATE_STORAGE_CLIENT(pipeline_options, use_credentials)
    session = BoundedSession(client._credentials, _limits(pipeline_options).gcs_timeout_secs)
    session.configure_mtls_channel(client._client_cert_source)
    # The client builds its session lazily from these same credentials; give it this one first.
    client._http_internal = session
    return client


def get_retry(pipeline_options: PipelineOptions):
    """Beam's retry policy (its predicate and throttling counter) with explicit bounds."""
    retry = _BEAM_GET_RETRY(pipeline_options)
    return retry.with_delay(
        GCS_RETRY_INITIAL_S, GCS_RETRY_MAXIMUM_S, GCS_RETRY_MULTIPLIER
    ).with_timeout(_limits(pipeline_options).gcs_retry_deadline_secs)


def bound_beam_gcs_requests() -> None:
    """Make every GcsIO that Beam builds (one per filesystem call) use the bounded client.

    Beam's GCS filesystem offers no option for request timeouts or retry bounds, and builds its
    client through these two module functions. Done at import of this module.
    """
    gcsio.create_storage_client = create_storage_client
    gcsio_retry.get_retry = get_retry


class BoundedGcsRequests(BeamPlugin):
    """Beam's runners list every imported BeamPlugin, and Dataflow workers import each one at
    startup: so this module, and the bounds, are in place before any stage touches gs://, even
    a stage of Beam's own transforms only."""


bound_beam_gcs_requests()
