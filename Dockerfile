# Airflow image of the image-embeddings stack: the official Airflow image plus exactly the
# project's lock (requirements.txt), so DAG tasks, the DirectRunner and the Dataflow launcher run
# on the versions the tests ran on.
#
#   docker compose build                               # what docker-compose.yaml uses
#   docker build -t image-embeddings-airflow:latest .  # the same, by hand
#
# Nothing of the project's code is copied: docker-compose.yaml mounts dags/, plugins/ and
# beam_jobs/, so editing them needs no rebuild. Only a change of requirements.txt does.
FROM apache/airflow:3.3.2-python3.11

# The official recipe for a requirements file (docs: "Adding packages from requirements.txt"):
# pip as the airflow user, with apache-airflow named at the image's own version so that a
# conflict fails the build instead of silently moving Airflow. The lock pins that same version.
# Packages the image ships beyond the lock stay installed; among them is the Postgres driver
# (psycopg2) that the stack's metadata database needs.
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /requirements.txt
