"""A corpus of messages for comparing readings of MIME: ordinary mail, and the shapes on
which MIME parsers are known to disagree.

``CORPUS`` maps a shape's name to the message (bytes, LF line ends, as qmail spools it).
``PLANTED`` maps each shape to the file planted in it, as the user would save it: ``EXE``
(a DOS/Windows executable, named like ``x.exe``) in every hostile shape, ``ZIP`` (a zip
archive holding ``x.exe``) in the zip shapes, ``SCRIPT`` (JScript, ``invoice.js``) in the
named forwarded message, the image or document in the ordinary ones;
``plain`` and ``alternative`` plant nothing. ``NAMES`` maps a shape to the names a mail
client may give the planted file. tests/test_differential.py reads the corpus three ways
(qqfilter's walk, Python's email package, ripmime).

The messages are built here rather than kept as files, so each shape is spelled out next to
the reason it is in the corpus.
"""

import base64
import binascii
import quopri
import zipfile
from io import BytesIO
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _exe() -> bytes:
    """A small DOS/Windows executable header: MZ, a DOS stub, a PE signature."""
    stub = b"This program cannot be run in DOS mode.\r\r\n$"
    header = bytearray(0x80)
    header[0:2] = b"MZ"
    header[2:16] = b"\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    header[0x3C:0x40] = (0x80).to_bytes(4, "little")
    header[0x4E : 0x4E + len(stub)] = stub
    return bytes(header) + b"PE\x00\x00\x4c\x01\x03\x00" + bytes(range(256)) * 2


def _zip() -> bytes:
    """A zip archive (stored, fixed dates: the same bytes on every run) holding x.exe."""
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        member = zipfile.ZipInfo("x.exe", date_time=(2026, 11, 24, 10, 0, 0))
        archive.writestr(member, EXE)
    return out.getvalue()


EXE = _exe()
"""The planted executable: its decoded content starts with b"MZ"."""
ZIP = _zip()
"""The planted zip archive: one member, x.exe (EXE)."""
SCRIPT = b'var shell = new ActiveXObject("WScript.Shell");\nshell.Run("calc.exe");'
"""A JScript file, as Windows Script Host runs it."""
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
    b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
    b"\x00\x00\x00\x00IEND\xaeB`\x82"
)


def b64(data: bytes) -> bytes:
    """base64 in 76-character lines, as mail programs write it."""
    return base64.encodebytes(data)


def qp(data: bytes) -> bytes:
    """Quoted-printable for text: line ends kept, ``=`` and 8-bit bytes escaped."""
    return quopri.encodestring(data)


def qp_binary(data: bytes) -> bytes:
    """Quoted-printable for binary data: CR and LF escaped too (soft line breaks only)."""
    return binascii.b2a_qp(data, istext=False, header=False)


def uu(data: bytes, name: bytes, mode: bytes = b"644") -> bytes:
    """A uuencoded file: ``begin`` line, 45 bytes a line, the empty line, ``end``."""
    lines = [b"begin " + mode + b" " + name + b"\n"]
    for at in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[at : at + 45]))
    lines.append(b"`\nend\n")
    return b"".join(lines)


HEADERS = (
    b"Received: from mail.example.com (HELO mail.example.com) (192.0.2.10)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 10:00:00 -0000\n"
    b"From: Alice <alice@example.com>\n"
    b"To: Bob <bob@example.org>\n"
    b"Subject: the files\n"
    b"Date: Tue, 24 Nov 2026 10:00:00 +0000\n"
    b"Message-ID: <files-1@example.com>\n"
    b"MIME-Version: 1.0\n"
)
"""A top-level header block, before the Content-Type field."""
MBOX_LINE = b"From alice@example.com Tue Nov 24 10:00:00 2026\n"
TEXT_PART = b"Content-Type: text/plain; charset=utf-8\n\nThe file is attached.\n"


def exe_part(
    name: bytes = b"x.exe", encoding: bytes = b"base64", data: bytes = EXE, headers: bytes = b""
) -> bytes:
    """An attachment part: the executable, named ``name``, in base64 (or ``encoding``)."""
    if headers:
        fields = headers
    else:
        fields = (
            b'Content-Type: application/octet-stream; name="' + name + b'"\n'
            b'Content-Disposition: attachment; filename="' + name + b'"\n'
        )
    body = b64(data) if encoding == b"base64" else data
    return fields + b"Content-Transfer-Encoding: " + encoding + b"\n\n" + body


def multipart(boundary: bytes, *parts: bytes, subtype: bytes = b"mixed") -> bytes:
    """A multipart entity (Content-Type field, then body), closed properly."""
    out = [b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\n\n']
    out.append(b"This is a multi-part message in MIME format.\n\n")
    for part in parts:
        out.append(b"--" + boundary + b"\n" + part.rstrip(b"\n") + b"\n")
    out.append(b"--" + boundary + b"--\n")
    return b"".join(out)


def message(*parts: bytes, headers: bytes = HEADERS, boundary: bytes = b"b") -> bytes:
    """A message: the header block, then a multipart/mixed of ``parts``."""
    return headers + multipart(boundary, *parts)


def inner_message(*parts: bytes) -> bytes:
    """A message to forward: its own headers, a multipart/mixed (boundary "inner")."""
    headers = (
        b"From: Carol <carol@example.net>\n"
        b"To: Alice <alice@example.com>\n"
        b"Subject: the original\n"
        b"Date: Mon, 23 Nov 2026 09:00:00 +0000\n"
        b"MIME-Version: 1.0\n"
    )
    return message(*parts, headers=headers, boundary=b"inner")


def forwarded(content_type: bytes, encoding: bytes, inner: bytes) -> bytes:
    """A message forwarding ``inner`` as an attachment of ``content_type`` in ``encoding``."""
    if encoding == b"base64":
        body = b64(inner)
    elif encoding == b"quoted-printable":
        body = qp(inner)
    else:
        body = inner
    part = b"Content-Type: " + content_type + b"\n"
    if encoding:
        part += b"Content-Transfer-Encoding: " + encoding + b"\n"
    part += b'Content-Disposition: attachment; filename="original.eml"\n\n' + body
    return message(TEXT_PART, part)


def _ordinary() -> dict[str, bytes]:
    """Well-formed mail of the everyday kinds."""
    corpus = {"plain": (FIXTURES / "messages" / "plain.eml").read_bytes()}
    corpus["alternative"] = HEADERS + multipart(
        b"alt",
        b"Content-Type: text/plain; charset=utf-8\n\nLunch on Thursday?\n",
        b"Content-Type: text/html; charset=utf-8\n\n<p>Lunch on <b>Thursday</b>?</p>\n",
        subtype=b"alternative",
    )
    corpus["inline_image"] = HEADERS + multipart(
        b"rel",
        b'Content-Type: text/html; charset=utf-8\n\n<p>Our logo: <img src="cid:logo@x"></p>\n',
        b'Content-Type: image/png; name="logo.png"\n'
        b"Content-Transfer-Encoding: base64\n"
        b"Content-ID: <logo@x>\n"
        b'Content-Disposition: inline; filename="logo.png"\n\n' + b64(PNG),
        subtype=b'related; type="text/html"',
    )
    pdf_part = (
        b'Content-Type: application/pdf; name="report.pdf"\n'
        b'Content-Disposition: attachment; filename="report.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + b64(PDF)
    )
    corpus["pdf_attachment"] = message(TEXT_PART, pdf_part)
    corpus["forwarded_rfc822"] = forwarded(b"message/rfc822", b"", inner_message(pdf_part))
    digest_entry = (
        b"From: Carol <carol@example.net>\nSubject: issue 1\nMIME-Version: 1.0\n"
        + multipart(b"d1", TEXT_PART, pdf_part)
    )
    corpus["digest"] = HEADERS + multipart(
        b"dig",
        b"\n" + digest_entry,  # no headers: the default type of a digest's part, message/rfc822
        b"Content-Type: message/rfc822\n\nSubject: issue 2\n\nNothing new.\n",
        subtype=b"digest",
    )
    boundary = b"----=_NextPart_000_0001_01DB3E2A.5C4B7A10"
    corpus["outlook_unquoted_boundary"] = (
        HEADERS
        + b"Content-Type: multipart/mixed;\n\tboundary=" + boundary + b"\n"
        + b"X-MS-Has-Attach: yes\n\n"
        + b"This is a multipart message in MIME format.\n\n"
        + b"--" + boundary + b"\n" + TEXT_PART + b"\n"
        + b"--" + boundary + b"\n" + pdf_part + b"\n"
        + b"--" + boundary + b"--\n"
    )  # fmt: skip
    corpus["uuencode_in_text"] = (
        HEADERS
        + b"Content-Type: text/plain; charset=us-ascii\n\n"
        + b"The report, uuencoded:\n\n"
        + uu(PDF, b"report.pdf")
        + b"\nAlice\n"
    )
    return corpus


def _hostile() -> dict[str, bytes]:
    """The shapes parsers read differently, each hiding EXE (or ZIP) somewhere."""
    corpus: dict[str, bytes] = {}
    exe = exe_part()

    # mbox "From " lines: at the top, at the top of a forwarded message, inside a header block
    corpus["mbox_from_at_top"] = MBOX_LINE + message(TEXT_PART, exe)
    inner = inner_message(TEXT_PART, exe)
    corpus["mbox_from_in_forwarded"] = forwarded(b"message/rfc822", b"", MBOX_LINE + inner)
    before, after = HEADERS.split(b"MIME-Version", 1)
    corpus["mbox_from_in_header_block"] = message(
        TEXT_PART, exe, headers=before + MBOX_LINE + b"MIME-Version" + after
    )

    # forwarded messages in a transfer encoding: the inner message must be decoded to be read
    corpus["rfc822_base64"] = forwarded(b"message/rfc822", b"base64", inner)
    corpus["rfc822_quoted_printable"] = forwarded(b"message/rfc822", b"quoted-printable", inner)
    corpus["global_base64"] = forwarded(b"message/global", b"base64", inner)
    corpus["global_quoted_printable"] = forwarded(b"message/global", b"quoted-printable", inner)

    # delimiter lines that are not quite delimiter lines
    corpus["junk_after_close"] = (
        HEADERS
        + b'Content-Type: multipart/mixed; boundary="b"\n\n'
        + b"--b\n" + TEXT_PART
        + b"--b--x\n"  # not a close (RFC 2046): junk after the "--"
        + b"--b\n" + exe
        + b"--b--\n"
    )  # fmt: skip
    corpus["dash_b_x_in_part"] = (
        HEADERS
        + b'Content-Type: multipart/mixed; boundary="b"\n\n'
        + b"--b\n" + TEXT_PART
        + b"--b-x\n"  # the delimiter of a boundary "b-x", not of "b": body text
        + exe
        + b"--b--\n"
    )  # fmt: skip
    corpus["nested_boundary_b_x"] = message(
        TEXT_PART,
        multipart(b"b-x", b"Content-Type: text/plain\n\nInside.\n", exe),
    )

    # header blocks a strict reader stops early in
    corpus["white_space_before_headers"] = b" \n" + message(TEXT_PART, exe)
    corpus["empty_boundary"] = (
        HEADERS
        + b'Content-Type: multipart/mixed; boundary=""\n\n'
        + b"--\n" + TEXT_PART
        + b"--\n" + exe
        + b"----\n"
    )  # fmt: skip
    received = b"".join(
        b"Received: from relay%d.example.net (relay%d.example.net [198.51.100.%d])\n"
        b"  by relay%d.example.net with ESMTP id %08x; Tue, 24 Nov 2026 09:59:00 +0000\n"
        % (n, n, n % 250 + 1, n + 1, n)
        for n in range(800)
    )
    corpus["header_block_over_64k"] = message(TEXT_PART, exe, headers=received + HEADERS)

    # file names: every way to write one (the content is EXE in each, so a reader that
    # finds the part sees the executable whatever name it reads)
    def named(type_params: bytes, disposition: bytes) -> bytes:
        headers = b"Content-Type: application/octet-stream" + type_params + b"\n"
        if disposition:
            headers += disposition
        return message(TEXT_PART, exe_part(headers=headers))

    corpus["name_rfc2231_continuations"] = named(
        b"",
        b"Content-Disposition: attachment;\n"
        b"\tfilename*0*=utf-8''in%76oice;\n"
        b'\tfilename*1="-2026";\n'
        b"\tfilename*2*=%2Eexe\n",
    )
    corpus["name_duplicated_parameter"] = named(b'; name="x.txt"; name="x.exe"', b"")
    corpus["name_duplicated_disposition"] = named(
        b"",
        b'Content-Disposition: attachment; filename="x.txt"\n'
        b'Content-Disposition: attachment; filename="x.exe"\n',
    )
    corpus["name_quoted_pair"] = named(
        b'; name="report.ex\\e"', b'Content-Disposition: attachment; filename="report.ex\\e"\n'
    )
    utf8 = "r\u00e9sum\u00e9.exe".encode()
    corpus["name_raw_utf8"] = named(
        b'; name="' + utf8 + b'"',
        b'Content-Disposition: attachment; filename="' + utf8 + b'"\n',
    )
    corpus["name_encoded_word"] = named(
        b'; name="=?utf-8?B?eC5leGU=?="',
        b'Content-Disposition: attachment; filename="=?utf-8?B?eC5leGU=?="\n',
    )
    corpus["name_encoded_word_invalid_base64"] = named(
        b'; name="=?utf-8?B?A?= =?utf-8?B?eC5leGU=?="',
        b'Content-Disposition: attachment; filename="=?utf-8?B?A?="\n',
    )

    # a forwarded message with a file name, and no headers: a client saves it as the file
    # it names (a script here), and the walk must not read it only as a message
    corpus["rfc822_named_script"] = message(
        TEXT_PART,
        b'Content-Type: message/rfc822; name="invoice.js"\n'
        b'Content-Disposition: attachment; filename="invoice.js"\n\n'
        b"\n" + SCRIPT,  # an empty header block, then the body
    )

    # uuencode in a text part that is itself in a transfer encoding
    text = b"The file, uuencoded:\n\n" + uu(EXE, b"x.exe") + b"\nAlice\n"
    corpus["uuencode_in_base64_text"] = message(
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"Content-Transfer-Encoding: base64\n\n" + b64(text)
    )
    corpus["uuencode_in_quoted_printable_text"] = message(
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n"
        + qp(text).replace(b"\nbegin ", b"\n=62egin ")  # "begin" only once decoded
    )

    # a zip archive in the transfer encodings fewer readers decode
    corpus["zip_quoted_printable"] = message(
        TEXT_PART,
        exe_part(
            encoding=b"quoted-printable",
            data=qp_binary(ZIP),
            headers=b'Content-Type: application/zip; name="x.zip"\n'
            b'Content-Disposition: attachment; filename="x.zip"\n',
        ),
    )
    corpus["zip_x_uuencode"] = message(
        TEXT_PART,
        exe_part(
            encoding=b"x-uuencode",
            data=uu(ZIP, b"x.zip"),
            headers=b'Content-Type: application/zip; name="x.zip"\n'
            b'Content-Disposition: attachment; filename="x.zip"\n',
        ),
    )
    return corpus


ORDINARY = _ordinary()
HOSTILE = _hostile()
CORPUS: dict[str, bytes] = {**ORDINARY, **HOSTILE}

PLANTED: dict[str, bytes] = {
    "inline_image": PNG,
    "pdf_attachment": PDF,
    "forwarded_rfc822": PDF,
    "digest": PDF,
    "outlook_unquoted_boundary": PDF,
    "uuencode_in_text": PDF,
    **{name: ZIP if name.startswith("zip_") else EXE for name in HOSTILE},
    "rfc822_named_script": SCRIPT,
}
"""The file planted in each shape (``plain`` and ``alternative`` have none)."""

NAMES: dict[str, tuple[str, ...]] = {
    "inline_image": ("logo.png",),
    **{name: ("report.pdf",) for name in PLANTED if PLANTED[name] == PDF},
    **{name: ("x.exe",) for name in HOSTILE},
    "name_rfc2231_continuations": ("invoice-2026.exe",),
    "name_duplicated_parameter": ("x.txt", "x.exe"),
    "name_duplicated_disposition": ("x.txt", "x.exe"),
    "name_quoted_pair": ("report.exe", "report.ex\\e"),
    "name_raw_utf8": ("r\u00e9sum\u00e9.exe",),
    "name_encoded_word_invalid_base64": ("x.exe", "\ufffdx.exe", "=?utf-8?B?A?="),
    "rfc822_named_script": ("invoice.js",),
    "zip_quoted_printable": ("x.zip",),
    "zip_x_uuencode": ("x.zip",),
}
"""The names a mail client may show for the planted file."""
