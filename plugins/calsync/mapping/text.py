"""Text helpers for mapped values: HTML to plain text, whitespace tidying, control-character
removal, length limits and the conversion of formula results to strings."""

from __future__ import annotations

import datetime as dt
import functools
import re
import threading
from html import unescape
from html.parser import HTMLParser

from lxml import etree

from calsync.errors import MappingError

# HTML larger than this is cut before parsing; the result is truncated per field anyway.
MAX_HTML_INPUT = 4_000_000
# The largest value a formula may produce (before the per-field truncation).
MAX_TEXT = 2_000_000

# C0/C1 control characters except tab and newline, plus lone surrogates (which no database
# driver accepts).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029\x0b\x0c\x85]")
_SPACES = re.compile(r"[ \t\xa0\u3000]+")
_ANY_WS = re.compile(r"\s+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# A start or end tag, a comment or a doctype: what makes a text HTML. An address in angle
# brackets ("Pat <pat@example.org>", as the external-attendee line has it) is not one.
_HTML_TAG = re.compile(r"<(?:/?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>|!--|!doctype\b)", re.I)

# Elements whose content is never shown (or is metadata): dropped with everything inside.
_HIDDEN = frozenset({"script", "style", "head", "title", "template", "noscript", "object"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip
_CELL = frozenset({"td", "th"})
# Void elements: one line break each (the others give one at the start and one at the end).
_VOID_BLOCK = frozenset({"br", "hr"})
# What the lxml walk drops. Not head: libxml2 keeps elements it does not know as body
# content (section, main, o:p, custom ones) in the <head> a leading <style> or <meta>
# implies, and what a head holds in valid HTML is hidden anyway, or has no text.
_LXML_HIDDEN = _HIDDEN - {"head"}
# Control characters libxml2 replaces with U+FFFD or drops (depending on where they are)
# and lone surrogates it cannot take: such texts go to the Python parse, which keeps them
# in the data for _ANY_WS and tidy_text to deal with.
_LXML_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_FATAL = etree.ErrorLevels.FATAL
_TAG_MISMATCH = etree.ErrorTypes.ERR_TAG_NAME_MISMATCH
_local = threading.local()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCK:
            self.parts.append("\n")
        elif tag in _CELL:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            # HTML collapses source whitespace (newlines included) to single spaces.
            self.parts.append(_ANY_WS.sub(" ", data))

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        # "<![foo[" or "<![ " raise AssertionError in _markupbase; HTML reads a bogus comment.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self.parse_bogus_comment(i)


def strip_control(text: str) -> str:
    """Remove control characters other than tab and newline (and lone surrogates)."""
    return _CONTROL.sub("", text)


def tidy_text(text: str) -> str:
    """Normalise line breaks, drop control characters, trim every line, collapse runs of
    spaces and of blank lines; tabs and non-breaking spaces become plain spaces."""
    text = strip_control(_LINE_BREAKS.sub("\n", text))
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def looks_like_html(text: str) -> bool:
    """Whether a text (an OA schedule's details) is HTML rather than plain text."""
    return _HTML_TAG.search(text) is not None


def strip_html(html: str) -> str:
    """HTML to readable plain text: tags removed (the content of script/style/head too),
    entities decoded, paragraphs and line breaks kept as newlines, whitespace tidied."""
    html = str(html)
    if len(html) <= _CACHED_HTML_MAX:
        return _strip_html_cached(html)
    return _strip_html(html)


# A meeting's body reaches calsync once per attendee mailbox holding a copy, and again on
# every full read: the result is remembered for bodies of ordinary size (at most 1,024 of
# 16 KiB: the cache stays under ~32 MB whatever the bodies).
_CACHED_HTML_MAX = 16 * 1024


@functools.lru_cache(maxsize=1024)
def _strip_html_cached(html: str) -> str:
    return _strip_html(html)


def _strip_html(html: str) -> str:
    html = str(html)[:MAX_HTML_INPUT]
    if "<" not in html:
        # No markup: only character references to decode (as the Python parse does).
        return tidy_text(_ANY_WS.sub(" ", unescape(html)))
    text = _lxml_text(html)
    return _strip_html_py(html) if text is None else tidy_text(text)


def _strip_html_py(html: str) -> str:
    """The pure-Python parse (2-3x slower): for the texts _lxml_text leaves."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return tidy_text("".join(parser.parts))


def _html_parser() -> etree.HTMLParser:
    # One parser per thread: its error log tells whether this thread's parse went wrong.
    parser: etree.HTMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        # No network, no huge_tree (libxml2's depth and size limits stay on), the encoding
        # fixed (a <meta charset> in the body cannot change it); comments and PIs dropped.
        parser = etree.HTMLParser(
            encoding="utf-8",
            no_network=True,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            default_doctype=False,
            collect_ids=False,
        )
        _local.parser = parser
    return parser


def _lxml_text(html: str) -> str | None:
    """The text of an HTML text parsed by libxml2 (before tidy_text); None for a text libxml2
    cannot take whole, or would read differently from the Python parse."""
    if _LXML_UNSAFE.search(html):
        return None
    parser = _html_parser()
    try:
        root = etree.fromstring(html.encode("utf-8"), parser)
    except (etree.LxmlError, ValueError):
        return None
    for error in parser.error_log:
        # Past a limit (depth 256, 10 MB text) libxml2 stops and keeps what came before.
        if error.level >= _FATAL:
            return None
        # It drops an end tag it has nothing open for ("<pre><div>a</div>b</pre>": it closed
        # the pre at the div) or that crosses another ("<b><div>a</b>b</div>"), and with it
        # the line break the Python parse gives ("Unexpected end tag : pre", "Opening and
        # ending tag mismatch: b and div").
        if error.type == _TAG_MISMATCH and not _BLOCK.isdisjoint(
            (error.message or "").rpartition(": ")[2].split(" and ")
        ):
            return None
    if root is None:  # nothing but comments, a doctype, whitespace
        return ""
    parts: list[str] = []
    append = parts.append
    # Content after </html> lands in further top-level elements: walk them all, in order.
    stack: list[etree._Element | str] = [*reversed(list(root.itersiblings())), root]
    stack.extend(root.itersiblings(preceding=True))  # nearest first: popped first
    # Iterative (a deep tree must not exhaust the stack): pop an element, emit its start and
    # text, push what comes after it (its tail, the end of a block, its children) reversed.
    # A block's line break is a NUL (which no libxml2 text holds) until whitespace runs are
    # collapsed in one pass over the whole text.
    while stack:
        node = stack.pop()
        if node.__class__ is str:
            append(node)
            continue
        tag = node.tag
        if tag in _LXML_HIDDEN or tag.__class__ is not str:
            tail = node.tail
            if tail:
                append(tail)
            continue
        end = ""
        if tag in _BLOCK:
            append("\0")
            if tag not in _VOID_BLOCK:
                end = "\0"
        elif tag in _CELL:
            append(" ")
        text = node.text
        if text:
            append(text)
        tail = node.tail
        if len(node):
            if tail:
                stack.append(tail)
            if end:
                stack.append(end)
            stack.extend(node[::-1])
        else:
            if end:
                append(end)
            if tail:
                append(tail)
    return _ANY_WS.sub(" ", "".join(parts)).replace("\0", "\n")


def one_line(text: str) -> str:
    """Any whitespace run (newlines included) becomes one space; control characters go."""
    return _ANY_WS.sub(" ", strip_control(_LINE_BREAKS.sub("\n", text))).strip()


def truncate(text: str, max_chars: int, max_bytes: int | None = None) -> str:
    """Cut to at most ``max_chars`` characters (and ``max_bytes`` UTF-8 bytes), ending with
    an ellipsis when something was cut."""
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    if max_bytes is not None and len(text.encode("utf-8")) > max_bytes:
        # errors="ignore" drops a character split by the byte cut.
        cut = text.encode("utf-8")[: max_bytes - 3].decode("utf-8", errors="ignore")
        text = cut + "…"
    return text


def to_text(value: object, field: str) -> str:
    """A formula/rule result as a string: None → "", booleans → "true"/"false", dates in ISO
    form, a list of scalars joined with ", "; anything else is a MappingError."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        pieces = [to_text(item, field) for item in value]
        if sum(map(len, pieces)) + 2 * len(pieces) > MAX_TEXT:
            raise MappingError(field, f"the result exceeds {MAX_TEXT} characters")
        return ", ".join(pieces)
    raise MappingError(field, f"the result is a {type(value).__name__}, not text")
