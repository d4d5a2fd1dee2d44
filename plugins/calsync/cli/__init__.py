"""The ``calsync`` command (``bin/calsync`` or ``python -m calsync`` with ``plugins/`` on the path).

    calsync new --type exchange --name "Exchange HQ" [--id hq] [--set key=value ...]
    calsync validate [--include DIR]
    calsync sync --integration ID [--start YYYY-MM-DD --end YYYY-MM-DD] [--users a,b] [--dry-run]
    calsync deletes --integration ID {list | release}
    calsync accounts [--conn-id CONN | --url URL] set --user LOGIN --login EXCHANGE_LOGIN
    calsync accounts [--conn-id CONN | --url URL] rotate

``include/`` is ``--include``, else ``$CALSYNC_INCLUDE_DIR``, else this checkout's. Exit
status: 0 done, 1 a problem reported on standard error (a config error names file and field),
2 a usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calsync.errors import CalsyncError, ConfigError

CHECKOUT_INCLUDE = Path(__file__).resolve().parents[3] / "include"


def include_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("CALSYNC_INCLUDE_DIR") or CHECKOUT_INCLUDE)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# --- new ---------------------------------------------------------------------------------------


def _parse_sets(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CalsyncError(f"--set wants key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _ask(prompt: str, allowed: bool) -> str | None:
    if not allowed:
        return None
    try:
        answer = input(prompt)
    except EOFError:
        return None
    return answer.strip() or None


def cmd_new(args: argparse.Namespace) -> int:
    from calsync.cli import templates as tpl
    from calsync.config import (
        CONFIG_SUFFIXES,
        ID_PATTERN,
        _display,
        check_references,
        parse_integration,
    )
    from calsync.mapping import MappingLibrary

    root = include_dir(args.include)
    source = tpl.template_path(root, args.type)
    if not source.is_file():
        raise CalsyncError(f"no template {source} (types: {', '.join(tpl.SUITE_TYPES)})")
    text = source.read_text(encoding="utf-8")
    interactive = not args.no_input
    integration_id = args.id or tpl.slug(args.name)
    while not ID_PATTERN.fullmatch(integration_id or ""):
        if integration_id:
            print(f"not a valid id: {integration_id!r}", file=sys.stderr)
        integration_id = (
            _ask("integration id (file name; lower-case letters, digits, _): ", interactive) or ""
        )
        if not integration_id:
            raise CalsyncError(
                f"no integration id can be made from the name {args.name!r}: give --id "
                "(lower-case letters, digits and underscores)"
            )
    directory = root / "integrations"
    for suffix in CONFIG_SUFFIXES:
        existing = directory / f"{integration_id}{suffix}"
        if existing.exists():
            raise CalsyncError(f"{existing} exists: not overwritten (choose another --id)")

    sets = _parse_sets(args.set or [])
    required: dict[str, str] = {"name": args.name}
    if "name" in sets:
        raise CalsyncError("the name is given with --name, not --set name=…")
    wanted = tpl.placeholders(text)
    for holder in wanted:
        if holder.key in sets:
            required[holder.key] = sets.pop(holder.key)
    for holder in wanted:
        while not str(required.get(holder.key, "")).strip():
            hint = f" ({holder.description})" if holder.description else ""
            answer = _ask(f"{holder.key}{hint}: ", interactive)
            if answer is None:
                missing = [h.key for h in wanted if not str(required.get(h.key, "")).strip()]
                raise CalsyncError(
                    f"required value(s) missing: {', '.join(missing)} "
                    f"(give them as --set {missing[0]}=…)"
                )
            required[holder.key] = answer
    extra: dict[str, Any] = {key: tpl.parse_value(value) for key, value in sets.items()}
    try:
        content = tpl.fill(text, args.type, integration_id, required, extra)
    except tpl.TemplateError as exc:
        raise CalsyncError(str(exc)) from None

    target = directory / f"{integration_id}.yaml"
    display = _display(target)
    try:
        config = parse_integration(target, content, display)
        check_references(config, MappingLibrary.load(root / "mappings"), display)
    except ConfigError as exc:
        raise CalsyncError(f"{exc} (nothing written)") from None
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with open(target, "x", encoding="utf-8") as handle:
            handle.write(content)
    except FileExistsError:
        raise CalsyncError(f"{target} exists: not overwritten") from None
    print(f"wrote {display} (DAG {config.dag_id}, {config.type}, {config.direction})")
    print("next:")
    print(f"  - create the Airflow connection {config.connection_id!r} with the credentials")
    print(f"    (see the comments in {target.name}) and {config.oa_connection_id!r} for the OA")
    print("  - calsync validate")
    print(
        f"  - calsync sync --integration {config.id} --dry-run   (reads the suite, writes nothing)"
    )
    if config.schedule is None:
        print("  - no schedule: the DAG runs when triggered (set `schedule` for a daily sync)")
    return 0


# --- validate ----------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from calsync.config import _display, load_integrations
    from calsync.housekeeping import load_settings, settings_path
    from calsync.mapping import MappingLibrary

    root = include_dir(args.include)
    errors = 0
    library = None
    try:
        library = MappingLibrary.load(root / "mappings")
        print(f"ok    {_display(root / 'mappings')} (mapping library)")
    except ConfigError as exc:
        _err(str(exc))
        errors += 1
    loaded = load_integrations(root / "integrations", library)
    stems: dict[str, str] = {}
    for item in loaded:
        if item.stem in stems:
            _err(
                f"{_display(item.path)}: the integration id {item.stem!r} is also the name "
                f"of {stems[item.stem]}: one DAG id for two files"
            )
            errors += 1
        stems[item.stem] = _display(item.path)
        if item.error is not None:
            _err(str(item.error))
            errors += 1
            continue
        config = item.config
        assert config is not None
        state = "enabled" if config.enabled else "disabled"
        print(
            f"ok    {_display(item.path)}: DAG {config.dag_id} ({config.type}, {config.direction}, "
            f"{state}, schedule {config.schedule or 'manual only'})"
        )
    if not loaded:
        print(f"note: no integration files in {root / 'integrations'} (calsync new makes one)")
    try:
        load_settings(root)
        if settings_path(root).is_file():
            print(f"ok    {_display(settings_path(root))} (housekeeping)")
    except ConfigError as exc:
        _err(str(exc))
        errors += 1
    valid = sum(1 for item in loaded if item.error is None)
    print(f"{valid} valid integration(s), {errors} problem(s)")
    return 1 if errors else 0


# --- sync --------------------------------------------------------------------------------------


def _load_one(root: Path, integration_id: str) -> tuple[Any, Any]:
    from calsync.config import CONFIG_SUFFIXES, check_references, parse_integration
    from calsync.mapping import MappingLibrary

    for suffix in CONFIG_SUFFIXES:
        path = root / "integrations" / f"{integration_id}{suffix}"
        if path.is_file():
            break
    else:
        raise CalsyncError(f"no integration {integration_id!r}: {root / 'integrations'} has no "
                           f"{integration_id}.yaml")  # fmt: skip
    config = parse_integration(path, path.read_text(encoding="utf-8"))
    library = MappingLibrary.load(root / "mappings")
    check_references(config, library, str(path))
    return config, library


def cmd_sync(args: argparse.Namespace) -> int:
    from calsync.cli import sync as cli_sync
    from calsync.oa.store import RunInfo

    root = include_dir(args.include)
    config, library = _load_one(root, args.integration)
    if not config.forward:
        raise CalsyncError(
            f"integration {config.id!r} is {config.direction}: `calsync sync` runs forward sync"
        )
    if not config.enabled and not args.dry_run:
        raise CalsyncError(
            f"integration {config.id!r} is disabled (enabled: false); --dry-run still works"
        )
    now = dt.datetime.now(dt.UTC)
    window, kind = cli_sync.window_for(config, args.start, args.end, now)
    requested = [u for item in args.users or [] for u in item.split(",")]
    run = RunInfo(
        integration_id=config.id,
        dag_id=None,
        run_id=f"calsync-cli__{now:%Y-%m-%dT%H:%M:%S}",
        two_way=config.direction == "both",
        conflict_policy=config.conflict_policy,
    )
    engine = cli_sync.oa_engine(config)
    header = (
        f"integration {config.id} ({config.type}): {window.start} … {window.end} "
        f"({window.timezone}, {kind})"
    )
    if args.dry_run:
        reports, notes = cli_sync.dry_run(engine, config, library, requested, window, run)
        cli_sync.print_plan(reports, notes, f"DRY RUN, {header}")
        return 1 if any(r.error for r in reports) else 0
    results = cli_sync.real_run(engine, config, library, requested, window, run)
    cli_sync.print_results(results, f"{header}, run {run.run_id}")
    return 1 if any(r.error for r in results) else 0


# --- deletes -----------------------------------------------------------------------------------


def cmd_deletes(args: argparse.Namespace) -> int:
    """List or release the suite deletions reverse sync's mass-deletion guard held (E10)."""
    from calsync.cli import sync as cli_sync
    from calsync.oa.store import RunInfo
    from calsync.sync import reverse_guard

    config, _library = _load_one(include_dir(args.include), args.integration)
    engine = cli_sync.oa_engine(config)
    if args.action == "list":
        with engine.connect() as conn:
            held = reverse_guard.held_list(conn, config.id)
        for item in held:
            print(f"{item.held_at:%Y-%m-%d %H:%M:%S}Z  schedule {item.schedule_id}  {item.title}")
        print(f"{len(held)} held deletion(s) in {config.id}")
        return 0
    now = dt.datetime.now(dt.UTC)
    run = RunInfo(integration_id=config.id, run_id=f"calsync-cli__{now:%Y-%m-%dT%H:%M:%S}")
    with engine.begin() as conn:
        released = reverse_guard.release_held(conn, config.id, run, "calsync deletes release")
    print(
        f"{released} held deletion(s) of {config.id} released: the next reverse drain deletes "
        "the events"
    )
    return 0


# --- accounts ----------------------------------------------------------------------------------


DEFAULT_OA_CONNECTION = "calsync_oa"


def cmd_accounts(rest: list[str]) -> int:
    """``calsync accounts …`` is ``python -m calsync.accounts …``, with ``--conn-id
    calsync_oa`` when neither ``--conn-id`` nor ``--url`` is given."""
    from calsync import accounts

    named = any(a in ("--url", "--conn-id") or a.startswith(("--url=", "--conn-id=")) for a in rest)
    if not named and not any(a in ("-h", "--help") for a in rest):
        rest = ["--conn-id", DEFAULT_OA_CONNECTION, *rest]
    return accounts.main(rest)


# --- main --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calsync",
        description="calsync admin commands: integration files, checks, a sync by hand.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    include_help = "the include/ directory (default: $CALSYNC_INCLUDE_DIR, else the checkout's)"

    new = sub.add_parser("new", help="write an integration file from a suite template (F11)")
    new.add_argument("--type", required=True, choices=_suite_types(), help="suite type")
    new.add_argument("--name", required=True, help="display name of the integration")
    new.add_argument("--id", help="integration id = file name (default: from the name)")
    new.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a value (required ones: see the template; others read as YAML), repeatable",
    )
    new.add_argument(
        "--no-input", action="store_true", help="never ask: a missing value is an error"
    )
    new.add_argument("--include", help=include_help)
    new.set_defaults(func=cmd_new)

    validate = sub.add_parser("validate", help="check every config file and mapping reference")
    validate.add_argument("--include", help=include_help)
    validate.set_defaults(func=cmd_validate)

    sync = sub.add_parser("sync", help="one forward sync outside Airflow (troubleshooting)")
    sync.add_argument("--integration", required=True, help="integration id (its file name)")
    sync.add_argument("--start", help="first day, YYYY-MM-DD (within today ± 15 days)")
    sync.add_argument("--end", help="last day, inclusive (default window: today ± window_days)")
    sync.add_argument(
        "--users", action="append", metavar="A,B", help="only these logins or mailboxes"
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="print the plan per mailbox; write nothing"
    )
    sync.add_argument("--include", help=include_help)
    sync.set_defaults(func=cmd_sync)

    deletes = sub.add_parser(
        "deletes", help="suite deletions held after an OA bulk delete (E10): list / release"
    )
    deletes.add_argument("--integration", required=True, help="integration id (its file name)")
    deletes.add_argument("action", choices=("list", "release"))
    deletes.add_argument("--include", help=include_help)
    deletes.set_defaults(func=cmd_deletes)

    acc = sub.add_parser(
        "accounts",
        help="F21 personal Exchange accounts: set / rotate (python -m calsync.accounts)",
        add_help=False,
    )
    acc.set_defaults(func=cmd_accounts)  # main() hands its arguments on untouched
    return parser


def _suite_types() -> list[str]:
    from calsync.cli.templates import SUITE_TYPES

    return list(SUITE_TYPES)


QUIET_LOGGERS = ("alembic", "airflow", "azure", "httpx", "httpcore", "kiota_http", "msal")


def quiet_logging() -> None:
    """Log lines go to stderr, warnings and up only (Airflow's and the client libraries':
    errors only; the msgraph hook alone would log every request URL), so stdout is the
    command's own output. ``CALSYNC_VERBOSE=1`` keeps every level."""
    import logging

    import airflow  # noqa: F401  (configures logging when first imported: adjust after it)

    root = logging.getLogger()
    for handler in root.handlers:  # log lines to stderr: stdout is the command's output
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)
    if os.environ.get("CALSYNC_VERBOSE"):
        return
    root.setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # The msgraph hook leaves its credential's aiohttp session to the garbage collector (by
    # design, see the provider's close()); asyncio reports it at exit, an alarm for nothing.
    logging.getLogger("asyncio").addFilter(
        lambda record: (
            not str(record.msg).startswith(("Unclosed client session", "Unclosed connector"))
        )
    )


def main(argv: Sequence[str] | None = None, *, configure_logging: bool = False) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if configure_logging:
        quiet_logging()
    parser = build_parser()
    try:
        if argv[:1] == ["accounts"]:
            return cmd_accounts(argv[1:])
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CalsyncError as exc:  # ConfigError included: names file and field
        _err(str(exc))
        return 1
