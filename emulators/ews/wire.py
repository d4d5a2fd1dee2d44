"""SOAP 1.1 / EWS XML on the wire: namespaces, parsing helpers, envelopes, faults, date-times.

Requests are parsed with lxml (no DTDs, no entity tricks: a request with a DOCTYPE is refused,
entities are never expanded, nothing is fetched); answers are built with the stdlib's
ElementTree (its C elements) and written by ``_serialize``. The emulator shares the machine's
cores with the client it is measured against, so its XML costs matter: defusedxml's parser
took 150 µs for a 2.5 KB CreateItem (lxml 17 µs), ElementTree's pure-Python ``tostring``
was 40% of the emulator's CPU in a bulk read (it walks the tree twice, for prefixes and to
write), and lxml's elements take six times as long to build. Calendar items, most of a bulk
read's answer, skip the tree: ``TypesWriter`` writes them as text (the same bytes in about
half the CPU) and ``raw`` places the text in the tree. EWS renders instants in UTC with
a ``Z``; clients send them with ``Z`` or an offset (exchangelib: the item's own zone).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from lxml import etree as LX

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
XML_TYPE = "text/xml; charset=utf-8"

NSMAP = {"s": SOAP, "m": M, "t": T, "e": E}
Element = LX._Element | ET.Element  # a request's (parse_xml) or an answer's (el, sub)
_PREFIXES = {uri: prefix for prefix, uri in NSMAP.items()}
_DECLARATIONS = "".join(f' xmlns:{prefix}="{uri}"' for prefix, uri in NSMAP.items())
# What XML 1.0 cannot carry (a seeded value may hold it; a client's request cannot).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

UTC = dt.UTC


class BadRequest(ValueError):
    """The request cannot be understood (answered as ErrorSchemaValidation)."""


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_parsers = threading.local()  # an lxml parser is not to be shared between threads


def _parser() -> LX.XMLParser:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = LX.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            remove_comments=True,
            remove_pis=True,
            huge_tree=False,
        )
    return parser


def parse_xml(body: bytes) -> LX._Element:
    """Parse a request; a DOCTYPE (and so any entity declaration) is refused."""
    try:
        root = LX.fromstring(body, _parser())
    except LX.XMLSyntaxError as exc:
        raise BadRequest(f"the request is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise BadRequest("the request is refused: DTDForbidden")
    return root


def child(elem: Element | None, name: str) -> Element | None:
    """The first child with this local name (any namespace)."""
    if elem is None:
        return None
    for sub in elem:
        if local(sub.tag) == name:
            return sub
    return None


def children(elem: Element | None, name: str | None = None) -> list[Element]:
    if elem is None:
        return []
    return [sub for sub in elem if name is None or local(sub.tag) == name]


def text(elem: Element | None, name: str | None = None, default: str | None = None) -> str | None:
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


def _attrs(attrs: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in attrs.items() if v is not None}


def el(ns: str, name: str, text_: str | None = None, **attrs: Any) -> ET.Element:
    node = ET.Element(q(ns, name), _attrs(attrs))
    if text_ is not None:
        node.text = text_
    return node


def sub(
    parent: ET.Element, ns: str, name: str, text_: str | None = None, **attrs: Any
) -> ET.Element:
    tag = f"{{{ns}}}{name}"
    node = ET.SubElement(parent, tag, _attrs(attrs)) if attrs else ET.SubElement(parent, tag)
    if text_ is not None:
        node.text = text_
    return node


def tsub(parent: ET.Element, name: str, text_: str | None = None, **attrs: Any) -> ET.Element:
    # sub() inlined: an answer of 40 items builds ~2,000 of these
    tag = f"{{{T}}}{name}"
    node = ET.SubElement(parent, tag, _attrs(attrs)) if attrs else ET.SubElement(parent, tag)
    if text_ is not None:
        node.text = text_
    return node


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
    """The document: ``node`` declaring the four prefixes, then its subtree. Text leaves out
    what XML 1.0 cannot carry (a seeded value may hold it; a client's request cannot)."""
    parts: list[str] = ['<?xml version="1.0" encoding="utf-8"?>\n']
    _write(node, parts.append, _DECLARATIONS)
    return "".join(parts).encode("utf-8")


_names: dict[str, str] = {}  # "{uri}local" -> "prefix:local"


def _name(tag: str) -> str:
    name = _names.get(tag)
    if name is None:
        uri, _, local_ = tag[1:].partition("}") if tag[:1] == "{" else ("", "", tag)
        name = _names[tag] = f"{_PREFIXES[uri]}:{local_}" if uri else tag
    return name


# A text or attribute value that needs more than copying (one regex search per value).
_SPECIAL_TEXT = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SPECIAL_ATTR = re.compile('[&<>"\r\n\t\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')


def _text(value: str) -> str:
    if not _SPECIAL_TEXT.search(value):
        return value
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    value = value.replace("\r", "&#13;")  # a parser reads a bare CR as LF
    return _NOT_XML.sub("", value)


def _attr(value: str) -> str:
    if not _SPECIAL_ATTR.search(value):
        return value
    value = _text(value).replace('"', "&quot;")
    return value.replace("\n", "&#10;").replace("\t", "&#09;")  # CR: _text


def _write(node: ET.Element, out: Any, declarations: str = "") -> None:
    if node.tag == RAW:
        out(node.text)
        return
    name = _name(node.tag)
    attrib = node.attrib
    attrs = "".join([f' {key}="{_attr(value)}"' for key, value in attrib.items()]) if attrib else ""
    text = node.text
    if text or len(node):
        out(f"<{name}{declarations}{attrs}>{_text(text) if text else ''}")
        for kid in node:
            _write(kid, out)
        out(f"</{name}>")
    else:
        out(f"<{name}{declarations}{attrs} />")
    if node.tail:
        out(_text(node.tail))


# The tag of a placeholder whose text is XML written already (raw()): copied as it is.
RAW = "{urn:calsync-emulator}raw"


def raw(xml: str) -> ET.Element:
    """An element standing for ``xml``, a finished fragment (a :class:`TypesWriter`'s text)."""
    node = ET.Element(RAW)
    node.text = xml
    return node


class TypesWriter:
    """``t:`` elements written straight to text, for answers with many of them (a 40-item
    GetItem). Building ElementTree elements and then walking them to write took 70% of the
    emulator's CPU in a bulk read; this writes what ``_write`` would, byte for byte."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[str] = []

    def leaf(self, name: str, text_: str | None = None, **attrs: Any) -> None:
        """``<t:name …>text</t:name>``; attributes that are None are left out."""
        head = f"t:{name}{_attr_text(attrs)}" if attrs else f"t:{name}"
        if text_:
            self.parts.append(f"<{head}>{_text(text_)}</t:{name}>")
        else:
            self.parts.append(f"<{head} />")

    def open(self, name: str, **attrs: Any) -> tuple[int, str]:
        """Start ``<t:name>``; :meth:`close` ends it (an element left empty is ``<t:name />``)."""
        head = f"t:{name}{_attr_text(attrs)}" if attrs else f"t:{name}"
        self.parts.append(f"<{head}>")
        return len(self.parts) - 1, head

    def close(self, opened: tuple[int, str]) -> None:
        at, head = opened
        if at == len(self.parts) - 1:
            self.parts[at] = f"<{head} />"
        else:
            self.parts.append(f"</{head.partition(' ')[0]}>")

    def element(self, node: ET.Element) -> None:
        """An ElementTree element, written as ``_write`` writes it."""
        _write(node, self.parts.append)

    def text(self) -> str:
        return "".join(self.parts)


def _attr_text(attrs: dict[str, Any]) -> str:
    return "".join(
        [f' {key}="{_attr(str(value))}"' for key, value in attrs.items() if value is not None]
    )


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
