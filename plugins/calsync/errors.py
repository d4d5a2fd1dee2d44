"""Typed errors. Messages name the file, field or record at fault, and never carry secrets."""

from __future__ import annotations


class CalsyncError(Exception):
    """Base class of calsync's own errors."""


class ConfigError(CalsyncError):
    """A configuration file (integration, mapping, rule, formula, filter) is invalid."""

    def __init__(self, file: str, field: str | None, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


class MappingError(CalsyncError):
    """Mapping or filtering one record failed (bad formula result, missing rule entry...)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"mapping of field {field!r} failed: {message}")


class RangeError(CalsyncError):
    """A manual sync range is refused (start after end, outside today ± 15 days, not a date)."""


class ConnectorError(CalsyncError):
    """A suite request failed after the connector's own retries."""

    def __init__(self, message: str, *, status: int | None = None, retriable: bool = True) -> None:
        self.status = status
        self.retriable = retriable
        super().__init__(message)


class MailboxNotFound(ConnectorError):
    """The suite does not know the mailbox (wrong binding value, no licence...)."""

    def __init__(self, mailbox: str) -> None:
        super().__init__(f"mailbox {mailbox!r} not found in the suite", status=404, retriable=False)


class AccountMissing(ConnectorError):
    """A user in an Exchange integration's ``user`` mode has no personal account (F21)."""

    def __init__(self, mailbox: str) -> None:
        super().__init__(
            f"no personal Exchange account for {mailbox} (user access mode): the user sets it "
            "in the OA's personal settings, or an admin with `calsync accounts set`",
            status=None,
            retriable=False,
        )
