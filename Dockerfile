# The image every Airflow service of docker-compose.yaml runs: Airflow's official image with
# calsync's pinned requirements (requirements.txt + constraints.txt: the azure provider, the
# celery provider with celery[redis] < 5.7, exchangelib, psycopg, …) installed into it.
# dags/, plugins/ and include/ are mounted, not copied: edit them without rebuilding.
#
#   docker compose build        (docker-compose.yaml builds it on first `up` anyway)
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

COPY --chown=airflow:root requirements.txt constraints.txt /opt/airflow/calsync-requirements/
# apache-airflow is pinned in requirements.txt to the image's own version, so pip keeps it.
RUN pip install --no-cache-dir \
      -r /opt/airflow/calsync-requirements/requirements.txt \
      -c /opt/airflow/calsync-requirements/constraints.txt
