"""strip_html (calsync.mapping.text): the lxml parse and walk, the pure-Python parse it falls
back to for texts libxml2 cannot take or would read differently, and that any text gives
text without control characters."""

from __future__ import annotations

import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from calsync.mapping import text
from calsync.mapping.text import _lxml_text, _strip_html, _strip_html_py, strip_html

# ----------------------------------------------------------------------------- lxml path


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            "<p>议程 <b>12</b>: 进度 &amp; 风险</p><ul><li>第 3 组</li></ul>",
            "议程 12: 进度 & 风险\n\n第 3 组",
        ),
        ("a<br>b<br/>c<BR />d<hr>e", "a\nb\nc\nd\ne"),
        (
            "<table><tr><th>Item</th><th>Owner</th></tr><tr><td>预算</td><td>Ann</td></tr></table>",
            "Item Owner\n\n预算 Ann",
        ),
        ("a<!-- hidden -->b<?php echo 1 ?>c<!---->d", "abcd"),
        ('<P TITLE="a>b" class=x>Up</P><DIV>Case</DIV>', "Up\n\nCase"),
        (
            "<p>&nbsp;&amp;&#x4e2d;&#20013;&unknown;&copy &lt;b&gt; &quot;q&quot;</p>",
            '&中中&unknown;© <b> "q"',
        ),
        ("<p>a \n\t b\r\n  c</p>   <span>d</span>\n<span>e</span>", "a b c\nd e"),
        (
            "<script>alert('<p>x</p>')</script><style>p{}</style><noscript>ns</noscript>"
            "<template><b>t</b></template><object>o</object>shown",
            "shown",
        ),
        # libxml2 puts what follows </html> in a second top-level element
        (
            "<html><head><title>T</title><meta charset=utf-8></head><body><p>x</p></body>"
            "</html>\nfooter",
            "x\nfooter",
        ),
        # ... and elements it does not know in the <head> a leading <style> implies
        ("<style>p { margin: 0 }</style><section>s</section><o:p>o</o:p>", "s\no"),
        ("<p>😀 🎉 👨\u200d👩\u200d👧 𠜎</p>", "😀 🎉 👨\u200d👩\u200d👧 𠜎"),
        ("<!-- only a comment -->", ""),
        ("<!DOCTYPE html>", ""),
        ("Pat <pat@example.org> wrote:<br>hi", "Pat wrote:\nhi"),
        ("<", "<"),
        ("x < y and y > z <b>bold</b>", "x < y and y > z bold"),
    ],
)
def test_lxml_path(html: str, expected: str) -> None:
    assert _lxml_text(html) is not None
    assert _strip_html(html) == expected
    assert _strip_html_py(html) == expected  # what the pure-Python parse gives too


def test_optional_end_tags_give_the_breaks_of_closed_ones() -> None:
    # The one (deliberate) difference from the pure-Python parse on valid HTML: an item or
    # paragraph whose end tag is left out gets the line breaks of a closed one.
    html = "<ul><li>c<li>d</ul><p>e<p>f"
    assert _strip_html(html) == _strip_html("<ul><li>c</li><li>d</li></ul><p>e</p><p>f</p>")
    assert _strip_html(html) == "c\n\nd\n\ne\n\nf"


def test_no_markup_skips_the_parse() -> None:
    assert _strip_html("  a &amp; b\r\n\r\n c &nbsp; ") == "a & b c"


def test_threads_each_have_their_own_parser() -> None:
    bodies = [f"<p>议程 <b>{n}</b></p><ul><li>{n % 7}</li></ul>" * (n % 5 + 1) for n in range(400)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(_strip_html, bodies)) == [_strip_html_py(b) for b in bodies]


# ----------------------------------------------------------------------------- fallback


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("a\x00b<b>c</b>", "abc"),  # NUL: libxml2 makes it U+FFFD
        ("x\ud800<p>y</p>", "x\ny"),  # a lone surrogate cannot be encoded
        ("<p>a\x0bb\x0cc\x01d\x85e</p>", "a b cd e"),
        ("<div>" * 300 + "deep" + "</div>" * 300, "deep"),  # past libxml2's depth limit
        ("<b><div>a</b>b</div>", "ab"),  # libxml2 moves the div's end
        ("a</p>b", "a\nb"),  # ... or drops a stray one
        ("a</br>b", "a\nb"),
        ("<![foo[x]]>\x01y", "y"),  # an AssertionError in html.parser before
        ("<![ \x01", "<!["),
    ],
)
def test_fallback_to_the_python_parse(html: str, expected: str) -> None:
    assert _lxml_text(html) is None
    assert _strip_html(html) == expected


def test_fallback_past_libxml2_size_limit() -> None:
    html = "<p>" + "中" * 3_400_000 + "</p>"  # one text node over 10 MB in UTF-8
    assert _lxml_text(html) is None
    assert _strip_html(html) == "中" * 3_400_000


def test_fallback_when_lxml_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise etree.ParserError("refused")

    monkeypatch.setattr(text.etree, "fromstring", refuse)
    assert _lxml_text("<p>a</p>") is None
    assert _strip_html("<p>a</p><p>b</p>") == "a\n\nb"


# ----------------------------------------------------------------------------- property


_PIECES = st.sampled_from(
    [
        "<", ">", "</", "<!", "<![", "<!--", "-->", "<?", "]]>", "[", "&", "&#", "&#x", ";", "=",
        "'", '"', "/", " ", "\n", "\r", "p", "br", "div", "script", "head", "title", "xmp", "td",
        "li", "&amp;", "&nbsp;", "&#1;", "&#0;", "\x00", "\x0b", "\x0c", "\x85", "\ud800", "议程",
        "😀",
    ]
)  # fmt: skip
_MARKUP = st.lists(st.one_of(_PIECES, st.text(max_size=3)), max_size=40).map("".join)


def _clean(out: str) -> bool:
    return not any(unicodedata.category(c) in ("Cc", "Cs") and c != "\n" for c in out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), _MARKUP))
def test_any_text_gives_clean_text(html: str) -> None:
    out = strip_html(html)
    assert _clean(out) and out == out.strip()
    assert _clean(_strip_html_py(html))


_WORDS = st.sampled_from(
    [
        "议程", "hello world", " ", "\n", "\t", "&amp;", "&nbsp;", "&#x4e2d;", "&lt;b&gt;", "😀",
        "&unknown;", "a < b", "x\r\ny", "\xa0", "\u3000", "&copy", "Q&A",
    ]
)  # fmt: skip
_EMPTY = st.sampled_from(["<br>", "<br/>", "<BR />", "<img src=x>", "<!-- c -->", "<wbr>"])
_HIDDEN_ELEMENTS = st.sampled_from(
    [
        "<script>if (a < b) { x = '</p>'; }</script>", "<style>p { margin: 0 }</style>",
        "<noscript>ns</noscript>", "<template><b>t</b></template>", "<object>o</object>",
    ]
)  # fmt: skip
_INLINE = st.recursive(
    st.one_of(_WORDS, _EMPTY, _HIDDEN_ELEMENTS),
    lambda inner: st.tuples(
        st.sampled_from(["b", "i", "span", "em", "strong", "font", "u", "o:p", "SPAN"]),
        st.lists(inner, max_size=4),
    ).map(lambda p: f"<{p[0]}>{''.join(p[1])}</{p[0]}>"),
    max_leaves=12,
)
_FLOW = st.recursive(
    _INLINE,
    lambda flow: st.one_of(
        st.tuples(
            st.sampled_from(["div", "blockquote", "section", "DIV"]), st.lists(flow, max_size=4)
        ).map(lambda p: f"<{p[0]}>{''.join(p[1])}</{p[0]}>"),
        st.tuples(st.sampled_from(["p", "h1", "P"]), st.lists(_INLINE, max_size=4)).map(
            lambda p: f"<{p[0]}>{''.join(p[1])}</{p[0]}>"
        ),
        st.lists(flow, max_size=3).map(
            lambda items: f"<ul>{''.join(f'<li>{i}</li>' for i in items)}</ul>"
        ),
        st.lists(st.lists(flow, min_size=1, max_size=3), min_size=1, max_size=3).map(
            lambda rows: (
                "<table>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
                + "</table>"
            )
        ),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.lists(_FLOW, max_size=5).map("".join), document=st.booleans())
def test_valid_html_reads_as_the_python_parse_reads_it(body: str, document: bool) -> None:
    html = (
        f"<html><head><title>T</title><style>p{{}}</style></head><body>{body}</body></html>"
        if document
        else body
    )
    assert _strip_html(html) == _strip_html_py(html)
    if "<" in html:
        assert _lxml_text(html) is not None  # the fast path was taken
