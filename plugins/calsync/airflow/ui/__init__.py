"""The "Calendar sync / 日历同步" page of the Airflow UI (F19, E8).

``queries`` reads the sync log, deliveries and outbox of an OA database (SQLAlchemy Core,
bound parameters only, no Airflow needed); ``app`` is the FastAPI app Airflow's api-server
mounts (behind Airflow's own authentication) and renders it as server-side HTML (Jinja2,
autoescaped, no inline script) and JSON. ``plugins/calsync_plugin.py`` registers it.
"""
