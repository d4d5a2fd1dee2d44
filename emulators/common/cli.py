"""The foreground runner behind ``python -m emulators.<suite>``.

After the suite's own argparse: log to stderr, start, print one JSON line of ``state()`` and
write it to ``--state-file`` (atomically), wait for SIGTERM/SIGINT, stop, remove the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emulators.common import gc_tuning


def run(args: argparse.Namespace, make_emulator: Callable[[], Any]) -> int:
    """Run until SIGTERM/SIGINT; ``args`` carries ``verbose``, ``seed`` and ``state_file``."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    gc_tuning.tune()
    emulator = make_emulator()
    if args.seed:
        emulator.load_seed(args.seed)
    gc_tuning.freeze_loaded()
    emulator.start()
    try:
        state = json.dumps(emulator.state(), ensure_ascii=False)
        if args.state_file:
            write_atomically(args.state_file, state + "\n")
        print(state, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
        if args.state_file:
            args.state_file.unlink(missing_ok=True)
    return 0


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
