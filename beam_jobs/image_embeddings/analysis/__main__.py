"""`python -m beam_jobs.image_embeddings.analysis`: analyse one embedded day (see --help)."""

import logging

from beam_jobs.image_embeddings.analysis.job import run

if __name__ == "__main__":
    # INFO lets Beam's "Created job with id: [...]" through: Airflow's Beam provider reads the
    # Dataflow job id from that line of this process's output.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run()
