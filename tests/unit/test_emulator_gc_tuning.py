"""Emulator processes: rarer collections (never more frequent ones), the seed frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from emulators.common import gc_tuning


@pytest.fixture
def restore() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_thresholds_are_only_raised(restore: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc_tuning.tune()
    assert gc.get_threshold() == gc_tuning.THRESHOLDS
    gc.set_threshold(500_000, 5, 1_000)
    gc_tuning.tune()
    assert gc.get_threshold() == (500_000, 50, 1_000)


def test_automatic_collection_switched_off_stays_off(restore: None) -> None:
    gc.set_threshold(0, 10, 10)
    gc_tuning.tune()
    assert gc.get_threshold() == (0, 10, 10)


def test_what_is_loaded_is_frozen_out_of_collections(restore: None) -> None:
    store = [{"n": n} for n in range(1_000)]
    gc_tuning.freeze_loaded()
    assert gc.get_freeze_count() >= len(store)
