"""SOAP 1.1 / EWS XML on the wire: namespaces, parsing helpers, envelopes, faults, date-times.

Everything is parsed with the stdlib ``xml.etree.ElementTree`` (no DTDs, no entity tricks: a
request with a DOCTYPE is refused) and built with it too. EWS renders instants in UTC with a
``Z``; clients send them with ``Z`` or an offset (exchangelib: the item's own zone).
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML_TYPE = "text/xml; charset=utf-8"

for _prefix, _uri in (("s", SOAP), ("m", M), ("t", T), ("e", E)):
    ET.register_namespace(_prefix, _uri)

UTC = dt.UTC


class BadRequest(ValueError):
    """The request cannot be understood (answered as ErrorSchemaValidation)."""


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element:
    """Parse a request; DTDs and entity declarations are refused (defusedxml)."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        return fromstring(body, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise BadRequest(f"the request is refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise BadRequest(f"the request is not well-formed XML: {exc}") from None


def child(elem: ET.Element | None, name: str) -> ET.Element | None:
    """The first child with this local name (any namespace)."""
    if elem is None:
        return None
    for sub in elem:
        if local(sub.tag) == name:
            return sub
    return None


def children(elem: ET.Element | None, name: str | None = None) -> list[ET.Element]:
    if elem is None:
        return []
    return [sub for sub in elem if name is None or local(sub.tag) == name]


def text(
    elem: ET.Element | None, name: str | None = None, default: str | None = None
) -> str | None:
    node = child(elem, name) if name else elem
    if node is None:
        return default
    return node.text if node.text is not None else ""


def boolean(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


def xml_bool(value: bool) -> str:
    return "true" if value else "false"


# --- date-times -------------------------------------------------------------------------------


def parse_datetime(value: str, default_zone: dt.tzinfo = UTC) -> dt.datetime:
    """An xs:dateTime (``Z``, an offset, or none: then ``default_zone``) as aware UTC."""
    raw = value.strip()
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise BadRequest(f"not a date-time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_zone)
    return parsed.astimezone(UTC)


def parse_date(value: str) -> dt.date:
    """An xs:date, possibly with an offset (``2026-12-01+08:00``): the date part."""
    try:
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise BadRequest(f"not a date: {value!r}") from None


def fmt_datetime(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- building -----------------------------------------------------------------------------------


def el(ns: str, name: str, text_: str | None = None, **attrs: Any) -> ET.Element:
    node = ET.Element(q(ns, name), {k: str(v) for k, v in attrs.items() if v is not None})
    if text_ is not None:
        node.text = text_
    return node


def sub(
    parent: ET.Element, ns: str, name: str, text_: str | None = None, **attrs: Any
) -> ET.Element:
    node = el(ns, name, text_, **attrs)
    parent.append(node)
    return node


def tsub(parent: ET.Element, name: str, text_: str | None = None, **attrs: Any) -> ET.Element:
    return sub(parent, T, name, text_, **attrs)


def msub(parent: ET.Element, name: str, text_: str | None = None, **attrs: Any) -> ET.Element:
    return sub(parent, M, name, text_, **attrs)


@dataclass
class Request:
    """One HTTP request as the handler read it."""

    method: str
    path: str
    headers: Message
    body: bytes = b""
    client: str = ""  # the connection's peer, for per-connection state


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServerVersion:
    major: int = 15
    minor: int = 1
    build: int = 2507
    revision: int = 6


def envelope(body_child: ET.Element | None, version: ServerVersion, api_version: str) -> bytes:
    env = el(SOAP, "Envelope")
    header = sub(env, SOAP, "Header")
    sub(
        header,
        T,
        "ServerVersionInfo",
        MajorVersion=version.major,
        MinorVersion=version.minor,
        MajorBuildNumber=version.build,
        MinorBuildNumber=version.revision,
        Version=api_version,
    )
    body = sub(env, SOAP, "Body")
    if body_child is not None:
        body.append(body_child)
    return _serialize(env)


def _serialize(node: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(
        node, encoding="unicode"
    ).encode("utf-8")


def fault(
    code: str,
    message: str,
    version: ServerVersion,
    api_version: str,
    values: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A SOAP fault as Exchange sends it (HTTP 500), e.g. ErrorServerBusy with
    ``BackOffMilliseconds`` in ``detail/MessageXml``."""
    env = el(SOAP, "Envelope")
    body = sub(env, SOAP, "Body")
    flt = sub(body, SOAP, "Fault")
    code_el = ET.SubElement(flt, "faultcode")
    code_el.text = f"a:{code}"
    string_el = ET.SubElement(flt, "faultstring")
    string_el.text = message
    detail = ET.SubElement(flt, "detail")
    sub(detail, E, "ResponseCode", code)
    sub(detail, E, "Message", message)
    pairs = list(values)
    if pairs:
        xml = sub(detail, T, "MessageXml")
        for name, value in pairs:
            tsub(xml, "Value", value, Name=name)
    return _serialize(env)


def response_message(
    operation: str,
    code: str = "NoError",
    message: str | None = None,
    response_class: str | None = None,
) -> ET.Element:
    """``<m:{op}ResponseMessage ResponseClass=…>`` with its ResponseCode (and MessageText)."""
    klass = response_class or ("Success" if code == "NoError" else "Error")
    msg = el(M, f"{operation}ResponseMessage", ResponseClass=klass)
    if code != "NoError":
        msub(msg, "MessageText", message or code)
    msub(msg, "ResponseCode", code)
    if code != "NoError":
        msub(msg, "DescriptiveLinkKey", "0")
    return msg
