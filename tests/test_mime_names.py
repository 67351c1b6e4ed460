"""The reading of a part's Content-Type and Content-Disposition fields (checks/mime/names.py).

One test per way of spelling a file name: each asserts the blocked name is among the names a
client might use. The same shapes are read by Python's email package (policy.default), whose
name must be among ours too. Inputs that crashed the former reading must give the raw text;
arbitrary text must never raise.
"""

import os
from email import message_from_bytes, policy

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qqfilter.checks.mime.filetypes import name_problem
from qqfilter.checks.mime.kinds import BLOCKED_EXTENSIONS
from qqfilter.checks.mime.names import Description, _describe, describe


def latin1(raw: bytes) -> str:
    """A header value as the walk hands it over: the raw bytes, latin-1 decoded."""
    return raw.decode("latin-1")


Shape = tuple[str, list[str], list[str], str]
# (id, Content-Type values, Content-Disposition values, a blocked name that must be found)
SHAPES: list[Shape] = [
    ("type name", ['application/pdf; name="report.exe"'], [], "report.exe"),
    ("disposition filename", [], ['attachment; filename="report.exe"'], "report.exe"),
    ("unquoted", [], ["attachment; filename=report.exe"], "report.exe"),
    ("upper-case key, spaces", [], ['attachment; FileName = "report.exe"'], "report.exe"),
    ("filename in the type", ['application/pdf; filename="report.exe"'], [], "report.exe"),
    ("name in the disposition", [], ['attachment; name="report.exe"'], "report.exe"),
    ("rfc 2231", [], ["attachment; filename*=utf-8''report.exe"], "report.exe"),
    ("rfc 2231 percent", [], ["attachment; filename*=utf-8''report%2Eexe"], "report.exe"),
    ("rfc 2231 language", [], ["attachment; filename*=utf-8'en-us'report.exe"], "report.exe"),
    ("rfc 2231 quoted", [], ["attachment; filename*=\"utf-8''report.exe\""], "report.exe"),
    (
        "rfc 2231 right-to-left mark",
        [],
        ["attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe"],
        "invoice\u202efdp.exe",
    ),
    (
        "rfc 2231 latin-1",
        ["application/pdf; name*=iso-8859-1''r%E9sum%E9.exe"],
        [],
        "r\xe9sum\xe9.exe",
    ),
    (
        "rfc 2231 beside a plain name",
        [],
        ["attachment; filename=\"report.pdf\"; filename*=utf-8''report.exe"],
        "report.exe",
    ),
    (
        "continuations",
        [],
        ['attachment; filename*0="rep"; filename*1="ort.exe"'],
        "report.exe",
    ),
    (
        "continuations, extended",
        [],
        ["attachment; filename*0*=utf-8''invoice%E2%80%AE; filename*1=\"fdp.exe\""],
        "invoice\u202efdp.exe",
    ),
    (
        "continuations out of order",
        [],
        ['attachment; filename*1="ort.exe"; filename*0="rep"'],
        "report.exe",
    ),
    (
        "continuations, a duplicated section (last copy)",
        [],
        ['attachment; filename*0="report"; filename*1=".pdf"; filename*1=".exe"'],
        "report.exe",
    ),
    (
        "continuations, every copy of a section",
        [],
        ['attachment; filename*0="report"; filename*1=".pdf"; filename*1=".exe"'],
        "report.pdf.exe",
    ),
    (
        "continuations up to a gap",
        [],
        ['attachment; filename*0="report.exe"; filename*2=".pdf"'],
        "report.exe",
    ),
    (
        "duplicated parameter",
        [],
        ['attachment; filename="report.pdf"; filename="report.exe"'],
        "report.exe",
    ),
    (
        "duplicated field",
        [],
        ['attachment; filename="report.pdf"', 'attachment; filename="report.exe"'],
        "report.exe",
    ),
    (
        "duplicated content type",
        ['application/pdf; name="report.pdf"', 'application/pdf; name="report.exe"'],
        [],
        "report.exe",
    ),
    ("quoted-pair", [], ['attachment; filename="report.ex\\e"'], "report.exe"),
    (
        "quoted-pair kept (a reader that does not unescape)",
        [],
        [r'attachment; filename="a\b"'],
        "a\\b",
    ),
    ("semicolon in quotes", [], ['attachment; filename="report.exe;.pdf"'], "report.exe"),
    ("text after the closing quote", [], ['attachment; filename="report".exe'], "report.exe"),
    ("unclosed quote", [], ['attachment; filename="report.exe'], "report.exe"),
    ("unquoted with a space", [], ["attachment; filename=report.exe notes.pdf"], "report.exe"),
    ("inside another parameter", [], ['attachment; x="; filename=report.exe"'], "report.exe"),
    (
        "encoded word, B",
        [],
        ["attachment; filename==?utf-8?B?cmVwb3J0LmV4ZQ==?="],
        "report.exe",
    ),
    (
        "encoded word, Q",
        [],
        ["attachment; filename==?utf-8?Q?report=2Eexe?="],
        "report.exe",
    ),
    (
        "encoded word in quotes",
        [],
        ['attachment; filename="=?utf-8?B?cmVwb3J0LmV4ZQ==?="'],
        "report.exe",
    ),
    (
        "adjacent encoded words",
        [],
        ['attachment; filename="=?utf-8?Q?rep?= =?utf-8?Q?ort.exe?="'],
        "report.exe",
    ),
    (
        "a character split between encoded words",
        [],
        ['attachment; filename="=?utf-8?B?aW52b2ljZeKA?= =?utf-8?B?rmZkcC5leGU=?="'],
        "invoice\u202efdp.exe",
    ),
    (
        "encoded word with a language",
        ['application/pdf; name="=?utf-8*en?Q?report.exe?="'],
        [],
        "report.exe",
    ),
    (
        "encoded word, utf-7",
        ['application/pdf; name="=?utf-7?Q?report+AC4-exe?="'],
        [],
        "report.exe",
    ),
    (
        "encoded word, unknown charset",
        ['application/pdf; name="=?x-unknown?B?cmVwb3J0LmV4ZQ==?="'],
        [],
        "report.exe",
    ),
    (
        "encoded word, charset that lies",
        ['application/pdf; name="=?us-ascii?Q?invoice=E2=80=AEfdp.exe?="'],
        [],
        "invoice\u202efdp.exe",
    ),
    (
        "the whole field encoded",
        [],
        ["=?utf-8?B?YXR0YWNobWVudDsgZmlsZW5hbWU9InJlcG9ydC5leGUi?="],
        "report.exe",
    ),
    (
        "raw utf-8",
        [],
        [latin1(b'attachment; filename="invoice\xe2\x80\xaefdp.exe"')],
        "invoice\u202efdp.exe",
    ),
    ("raw latin-1", [], [latin1(b'attachment; filename="r\xe9sum\xe9.exe"')], "r\xe9sum\xe9.exe"),
    ("nul", [], ['attachment; filename="report.exe\x00.pdf"'], "report.exe"),
    ("no disposition type", [], ['filename="report.exe"'], "report.exe"),
]
CRASHES: list[Shape] = [
    ("invalid base64", ['text/plain; name="=?utf-8?B?A?="'], [], "=?utf-8?B?A?="),
    (
        "nul in a charset",
        ['text/plain; name="=?utf\x00-8?B?cmVwb3J0LmV4ZQ==?="'],
        [],
        "=?utf\x00-8?B?cmVwb3J0LmV4ZQ==?=",
    ),
    (
        "unknown charset",
        ['text/plain; name="=?x-nope?Q?report.exe?="'],
        [],
        "=?x-nope?Q?report.exe?=",
    ),
    (
        "nul in an rfc 2231 charset",
        ["text/plain; name*=\x00utf-8''%E2%80%AE.exe"],
        [],
        "\x00utf-8''%E2%80%AE.exe",
    ),
]


@pytest.mark.parametrize(
    ("types", "dispositions", "blocked"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
def test_every_spelling_of_a_name_is_found(types, dispositions, blocked):
    found = describe(types, dispositions, "text/plain")
    assert blocked in found.names
    assert _describe(types, dispositions, "text/plain") == found  # not the last resort


@pytest.mark.parametrize(
    ("types", "dispositions", "raw"), [s[1:] for s in CRASHES], ids=[s[0] for s in CRASHES]
)
def test_what_crashed_the_stdlib_gives_the_raw_text(types, dispositions, raw):
    assert raw in _describe(types, dispositions, "text/plain").names


def test_the_names_of_the_shapes_are_refused():
    blocked = frozenset(BLOCKED_EXTENSIONS)
    for label, types, dispositions, _ in SHAPES:
        if label.startswith("quoted-pair kept"):
            continue
        names = describe(types, dispositions, "text/plain").names
        assert any(name_problem(name, blocked) for name in names), label


def python_filename(types: list[str], dispositions: list[str]) -> str | None:
    """The name Python's email package (policy.default) gives the same fields."""
    head = b"".join(b"Content-Type: " + t.encode("latin-1") + b"\n" for t in types)
    head += b"".join(b"Content-Disposition: " + d.encode("latin-1") + b"\n" for d in dispositions)
    return message_from_bytes(head + b"\nbody\n", policy=policy.default).get_filename()


@pytest.mark.parametrize(
    ("types", "dispositions"),
    [s[1:3] for s in SHAPES + CRASHES],
    ids=[s[0] for s in SHAPES + CRASHES],
)
def test_the_name_python_finds_is_among_ours(types, dispositions):
    try:
        theirs = python_filename(types, dispositions)
    except Exception:  # the stdlib's own failure on hostile input: nothing to compare
        return
    if theirs and not any(0xD800 <= ord(c) < 0xE000 for c in theirs):
        assert theirs in describe(types, dispositions, "text/plain").names


def test_ordinary_fields_give_exactly_the_expected_description():
    assert describe(["text/plain; charset=utf-8"], [], "text/plain") == Description(
        "text/plain", "", (), ""
    )
    assert describe(
        ['application/pdf; name="a.pdf"'], ['attachment; filename="a.pdf"'], "text/plain"
    ) == Description("application/pdf", "", ("a.pdf",), "attachment")
    assert describe(
        ['multipart/mixed;\tboundary="----=_Part_1_2.3"'], [], "text/plain"
    ) == Description("multipart/mixed", "----=_Part_1_2.3", (), "")
    assert describe(["Multipart/Alternative; boundary=abc "], [], "text/plain") == Description(
        "multipart/alternative", "abc", (), ""
    )
    assert describe([], ["inline"], "message/rfc822") == Description(
        "message/rfc822", "", (), "inline"
    )
    assert describe([], [], "text/plain") == Description("text/plain", "", (), "")


def test_the_first_name_is_the_one_to_show():
    found = describe(
        ['application/pdf; name="type.pdf"'],
        ["attachment; filename=\"plain.pdf\"; filename*=utf-8''extended.pdf"],
        "text/plain",
    )
    assert found.names == ("extended.pdf", "plain.pdf", "type.pdf")


def test_content_type_and_disposition_readings():
    assert describe(["garbage"], [], "message/rfc822").content_type == "message/rfc822"
    assert describe([" TEXT / HTML (comment)"], [], "x/y").content_type == "text/html"
    assert describe(["text/html", "image/png"], [], "x/y").content_type == "text/html"
    assert describe([], ["form-data"], "x/y").disposition == "attachment"  # RFC 2183 2.8
    assert describe([], ["inline", "attachment"], "x/y").disposition == "attachment"
    assert describe([], ["inline", "INLINE"], "x/y").disposition == "inline"
    assert describe([], [""], "x/y").disposition == ""
    assert describe(["multipart/mixed; boundary*=utf-8''b1"], [], "x/y").boundary == "b1"
    assert describe(['multipart/mixed; boundary="a\\"b"'], [], "x/y").boundary == 'a"b'


def test_hostile_fields_stay_fast():
    import time

    fields = [
        "attachment; " + "filename=a " * 6000,
        "attachment; " + ",filename=a" * 6000,
        ";" * 65536 + "=",
        "attachment; filename=" + "=?a?q?" * 10000,
        'attachment; filename="' + "=?utf-8?B?QUFB?= " * 4000,
        "attachment; " + "".join(f"filename*{i}*=%41;" for i in range(4000)),
        'attachment; filename="' + "\\" * 65536,
    ]
    for field in fields:
        started = time.monotonic()
        describe([field], [field], "text/plain")
        assert time.monotonic() - started < 2, field[:40]


FRAGMENTS = [
    "attachment",
    "inline",
    "text/plain",
    "multipart/mixed",
    ";",
    " ",
    '"',
    "\\",
    "=",
    "*",
    "'",
    "%",
    "%E2%80%AE",
    "%zz",
    "\x00",
    "\xe2\x80\xae",
    "\xff",
    "name",
    "filename",
    "filename*",
    "filename*0*",
    "filename*1",
    "name*99999999999999999999999",
    "boundary",
    "utf-8''",
    "\x00utf-8''",
    "=?",
    "?=",
    "?B?",
    "?Q?",
    "=?utf-8?B?A?=",
    "=?utf\x00-8?B?",
    "=?x-nope?Q?a?=",
    "=?utf-16?B?//4=?=",
    "=?idna?Q?",
    "=?punycode?B?/w==?=",
    "=?unicode_escape?Q?=5CN{?=",
    "report.exe",
    "\ud800",
]
header_text = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=30).map("".join),
)
EXAMPLES = int(os.environ.get("QQF_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=EXAMPLES or 500,
    derandomize=not EXAMPLES,  # the test command repeats the same cases; a long run explores
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(st.lists(header_text, max_size=3), st.lists(header_text, max_size=3), header_text)
@example(['text/plain; name="=?utf-8?B?A?="'], [], "text/plain")
@example(['text/plain; name="=?utf\x00-8?B?cmVwb3J0LmV4ZQ==?="'], [], "text/plain")
@example([], ["attachment; filename*" + "9" * 5000 + "=a.exe"], "text/plain")
@example([], ["attachment; filename==?unicode_escape?Q?=5CN{?="], "text/plain")
def test_describe_never_raises(types, dispositions, default):
    found = _describe(types, dispositions, default)  # the careful path itself, not the last resort
    assert describe(types, dispositions, default) == found
    assert isinstance(found.content_type, str)
    assert isinstance(found.boundary, str)
    assert found.disposition in ("attachment", "inline", "")
    assert len(set(found.names)) == len(found.names)
    assert all(isinstance(name, str) and name.strip() for name in found.names)


def test_the_last_resort_still_gives_the_structure_and_the_names(monkeypatch):
    from qqfilter.checks.mime import names

    def broken(*_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(names, "_describe", broken)
    found = describe(
        ['multipart/mixed; boundary="b1"; name="type.exe"'],
        ['attachment; filename="report.exe"'],
        "text/plain",
    )
    assert found == Description("multipart/mixed", "b1", ("report.exe", "type.exe"), "attachment")
