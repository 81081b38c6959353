"""`python -m beam_jobs.image_embeddings`: embed the images of a manifest (see --help)."""

import logging

from beam_jobs.image_embeddings.launcher import run

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

if __name__ == "__main__":
    # INFO lets progress lines and Beam's "Created job with id: [...]" through: Airflow's Beam
    # provider reads the Dataflow job id from that line of this process's output.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run()
