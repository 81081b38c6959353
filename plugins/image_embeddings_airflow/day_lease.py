"""The day lease seen from the DAG: a run takes its day before staging, gives it back at the end."""

from __future__ import annotations

import logging
from datetime import timedelta

from beam_jobs.image_embeddings import lease
from image_embeddings_airflow import storage

log = logging.getLogger(__name__)

# How often a run whose day another run holds looks again (the sensor sleeps in between, without
# holding a worker slot).
POKE_INTERVAL = timedelta(seconds=30)


def dag_holder(dag_id: str, run_id: str) -> str:
    """The lease holder of a DAG run: `dag:<dag_id>:<run_id>`, what the UI shows for that run."""
    return f"dag:{dag_id}:{run_id}"


def _client(output_dir: str):
    return storage.gcs_client() if storage.is_gcs(output_dir) else None


def claim(output_dir: str, holder: str, ttl: timedelta = lease.DEFAULT_TTL) -> bool:
    """Take the day for `holder`, or renew its own lease; False (logged) while another holds it."""
    output_dir = storage.absolute(output_dir)
    try:
        taken = lease.acquire(output_dir, holder, ttl, _client(output_dir))
    except lease.LeaseHeld as held:
        log.info("Waiting: %s", held)
        return False
    log.info("%s holds %s until %s", holder, output_dir, taken.record.expires_at)
    return True


def check(output_dir: str, holder: str) -> None:
    """Raise LeaseHeld (or RuntimeError) unless `holder` holds the day: before writing to it."""
    output_dir = storage.absolute(output_dir)
    lease.check_held(output_dir, holder, _client(output_dir))


def release(output_dir: str, holder: str) -> bool:
    """Give the day back if `holder` holds it; True when it did."""
    output_dir = storage.absolute(output_dir)
    released = lease.release_held(output_dir, holder, _client(output_dir))
    log.info("%s %s", "Released" if released else "Did not hold", output_dir)
    return released
