"""The sync process's interpreter settings: raised towards calsync's values, never lowered."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from calsync.sync import process_tuning


@pytest.fixture
def restore() -> Iterator[None]:
    interval, thresholds, enabled = sys.getswitchinterval(), gc.get_threshold(), gc.isenabled()
    yield
    sys.setswitchinterval(interval)
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()


def test_defaults_become_calsyncs_values(restore: None) -> None:
    sys.setswitchinterval(0.005)
    gc.set_threshold(700, 10, 10)
    process_tuning.tune_for_sync()
    assert sys.getswitchinterval() == pytest.approx(process_tuning.SWITCH_INTERVAL_S)
    assert gc.get_threshold() == process_tuning.GC_THRESHOLDS


def test_a_process_own_higher_values_are_kept(restore: None) -> None:
    sys.setswitchinterval(0.0002)
    gc.set_threshold(500_000, 5, 1_000)
    process_tuning.tune_for_sync()
    assert sys.getswitchinterval() == pytest.approx(0.0002)
    assert gc.get_threshold() == (500_000, 20, 1_000)


def test_automatic_collection_switched_off_stays_off(restore: None) -> None:
    gc.set_threshold(0)
    process_tuning.tune_for_sync()
    assert gc.get_threshold()[0] == 0
