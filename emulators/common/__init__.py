"""Scaffolding the suite emulators share: the HTTP(S) server and its lifecycle (``http``), the
throttling bookkeeping (``throttle``) and the foreground runner of ``python -m`` (``cli``).
What a suite means by a fault, a route or a statistic stays in that suite's package."""
