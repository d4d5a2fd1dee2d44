"""The forward DAG end to end for Exchange Server and Alibaba Mail V2, each against its
emulator (Office 365's runs are in test_forward_dag.py)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from calsync.oa import schema as t
from tests.integration.conftest import TODAY, oa_snapshot, people
from tests.integration.test_forward_dag import ti_states

pytestmark = pytest.mark.integration
ZONE = "Asia/Shanghai"


def exchange_seed(emu: Any) -> None:
    for email, name in people():
        emu.store.add_mailbox(email, name)
    emu.store.add_mailbox("meeting01@contoso.com", "会议室01", kind="Room")
    (a, _), (b, _), (c, _) = people()[:3]
    emu.store.add_event(
        a,
        {
            "subject": "EWS 项目周会",
            "start": f"{TODAY}T10:00:00",
            "end": f"{TODAY}T11:00:00",
            "timezone": "China Standard Time",
            "required_attendees": [b, c, "partner@fabrikam.com"],
            "resources": ["meeting01@contoso.com"],
        },
    )
    emu.store.add_event(
        b,
        {
            "subject": "EWS 年假",
            "is_all_day": True,
            "start": f"{TODAY + dt.timedelta(days=1)}T00:00:00",
            "end": f"{TODAY + dt.timedelta(days=2)}T00:00:00",
            "timezone": "China Standard Time",
        },
    )


def alimail_seed(emu: Any) -> None:
    for email, _ in people():
        emu.store.add_mailbox(email)
    (a, _), (b, bn) = people()[:2]
    emu.store.add_event(
        a,
        {
            "subject": "阿里 项目周会",
            "start": {"dateTime": f"{TODAY}T10:00:00", "timeZone": ZONE},
            "end": {"dateTime": f"{TODAY}T11:00:00", "timeZone": ZONE},
            "attendees": [{"email": b, "name": bn}, {"email": "partner@fabrikam.com", "name": "P"}],
        },
    )
    emu.store.add_event(
        b,
        {
            "subject": "阿里 年假",
            "isAllDay": True,
            "start": {"date": str(TODAY + dt.timedelta(days=1))},
            "end": {"date": str(TODAY + dt.timedelta(days=2))},
        },
    )


@pytest.fixture(scope="module")
def ews(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from emulators.ews import EwsEmulator

    emu = EwsEmulator(tls_dir=tmp_path_factory.mktemp("ews-tls")).start()
    yield emu
    emu.stop()


@pytest.fixture(params=["exchange", "alimail_v2"])
def suite_dag(request, airflow_db, include_dir, airflow_oa, monkeypatch) -> tuple[str, Any, Any]:
    kind = request.param
    if kind == "exchange":
        emu = request.getfixturevalue("ews")
        emu.reset()
        exchange_seed(emu)
        monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_EWS_TEST", emu.airflow_conn_json())
        section = (
            f"exchange: {{server: '{emu.service_endpoint}', ca_bundle: '{emu.ca_file}'}}\n"
            "connection_id: calsync_ews_test\n"
        )
        titles = {"EWS 项目周会", "EWS 年假"}
    else:
        emu = request.getfixturevalue("alimail_server")  # the session one (TLS too)
        emu.reset()
        alimail_seed(emu)
        monkeypatch.setenv("AIRFLOW_CONN_CALSYNC_ALI_TEST", emu.airflow_conn_json())
        section = f"alimail: {{endpoint: '{emu.endpoint}'}}\nconnection_id: calsync_ali_test\n"
        titles = {"阿里 项目周会", "阿里 年假"}
    (include_dir / "integrations" / "it_o365.yaml").unlink()
    (include_dir / "integrations" / "it_suite.yaml").write_text(
        f"name: suite test\ntype: {kind}\noa_connection_id: calsync_oa_test\n"
        f"timezone: {ZONE}\nwindow_days: 3\nexecution: {{retries: 0}}\n" + section
    )
    return kind, titles, emu


@pytest.mark.parametrize("blank_oa_url", ["sqlite"], indirect=True)  # 3 databases: o365's
def test_forward_dag_runs_end_to_end_for_each_suite(blank_oa_url, suite_dag, airflow_oa):
    from airflow.dag_processing.dagbag import DagBag

    kind, titles, _emu = suite_dag
    bag = DagBag(dag_folder=str(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])))
    assert bag.import_errors == {}
    dag = bag.dags["calsync_it_suite"]
    run = dag.test()
    assert str(run.state) == "success", ti_states(run)
    with airflow_oa.connect() as conn:
        rows = conn.execute(sa.select(t.schedules.c.title, t.schedules.c.all_day)).all()
    assert {r.title for r in rows} == titles, kind
    assert len(rows) == 2  # the meeting once, however many mailboxes hold a copy
    with airflow_oa.connect() as conn:
        kept = dict(
            conn.execute(sa.select(t.calendar_ids.c.mailbox, t.calendar_ids.c.calendar)).all()
        )
    if kind == "alimail_v2":  # each mailbox's calendar id, kept for the reverse drains
        assert kept == {email: "" for email, _ in people()}
    else:  # EWS names the default calendar: nothing to look up or keep
        assert kept == {}
    before = oa_snapshot(airflow_oa)
    again = dag.test()
    assert str(again.state) == "success"
    assert oa_snapshot(airflow_oa) == before
