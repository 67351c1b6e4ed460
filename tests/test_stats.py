"""``qqfilter stats`` on logs the filter itself wrote, stamped as multilog stamps them."""

import calendar
import gzip
import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from unittest import mock

import pytest
from clamav import TEXT_PART, attachment, mime
from conftest import QQFILTER, envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from qqfilter.logline import FIELDS, escape, format_line
from qqfilter.tools.stats import Stats, logread
from qqfilter.tools.stats.logread import TAI64_EPOCH, split_stamp

ENV = envelope(b"alice@example.com", b"bob@example.org")
DAY1 = 1_795_000_000 - 1_795_000_000 % 86400  # a midnight, UTC
PLAIN = b"Subject: hi\n\nhello\n"
EXE = mime(TEXT_PART, attachment(b"MZ" + bytes(60), b"setup.exe"))


def tai64n(seconds: float) -> str:
    """The TAI64N label for Unix time ``seconds`` (as multilog writes it)."""
    whole = int(seconds)
    return f"@{whole + TAI64_EPOCH:016x}{int((seconds - whole) * 1e9):08x}"


@pytest.fixture
def logs(qq, tmp_path):
    """A multilog directory: the filter's own lines, stamped, in a rotated .gz and current."""
    runs = [
        (DAY1 + 3600 * 9 + 10, PLAIN, {}),
        (DAY1 + 3600 * 9 + 20, EXE, {}),
        (DAY1 + 3600 * 10 + 5, PLAIN, {"QQF_MAXSIZE": "5"}),
        (DAY1 + 86400 + 60, PLAIN, {}),
        (DAY1 + 86400 + 70, EXE, {}),
        (DAY1 + 86400 + 80, EXE, {"QQF_LOG": "json"}),
        (DAY1 + 86400 + 90, PLAIN, {"QQF_CLAMD": f"unix:{tmp_path}/gone.sock"}),
    ]
    stamped = []
    for when, message, env in runs:
        out = qq.submit(message, ENV, env=env)
        (line,) = out.lines
        stamped.append(f"{tai64n(when)} {line}\n")
    directory = tmp_path / "log"
    directory.mkdir()
    rotated = directory / f"{tai64n(DAY1 + 86400)}.s.gz"
    with gzip.open(rotated, "wt") as stream:
        stream.writelines(stamped[:3])
    (directory / "current").write_text(
        "".join(stamped[3:]) + f"{tai64n(DAY1 + 86400 + 95)} tcpserver: status: 1/40\n"
    )
    return [str(rotated), str(directory / "current")]


def stats(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [QQFILTER, "stats", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_counts_per_day_and_tag_from_rotated_and_current_logs(logs):
    out = stats("--json", *logs)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    day1, day2 = (split_stamp(tai64n(DAY1)).time, split_stamp(tai64n(DAY1 + 86400)).time)
    assert (day1, day2) == (DAY1, DAY1 + 86400)
    rows = {(r["period"], r["verdict"], r["tag"]): r["count"] for r in data["counts"]}
    first, second = _day(DAY1), _day(DAY1 + 86400)
    assert rows == {
        (first, "accept", ""): 1,
        (first, "reject", "Reject::DATA::MIME_Attach"): 1,
        (first, "reject", "Reject::DATA::Invalid_Size"): 1,
        (second, "accept", ""): 1,
        (second, "reject", "Reject::DATA::MIME_Attach"): 2,
        (second, "tempfail", "clamd"): 1,
    }
    assert data["totals"] == {"accept": 2, "reject": 4, "tempfail": 1}


def _day(seconds: int) -> str:
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def test_per_hour(logs):
    data = json.loads(stats("--json", "--by", "hour", *logs).stdout)
    periods = sorted({r["period"] for r in data["counts"]})
    assert periods == [f"{_day(DAY1)} 09:00", f"{_day(DAY1)} 10:00", f"{_day(DAY1 + 86400)} 00:00"]


def test_mrtg_prints_its_four_lines(logs):
    out = stats("--mrtg", "mx1.example.org", "--window", "0", *logs)
    assert out.stdout.splitlines() == ["2", "5", "15:01", "mx1.example.org"]


def test_the_plot_is_a_png_carrying_the_plotted_numbers(logs, tmp_path):
    picture = tmp_path / "mail.png"
    out = stats("--plot", str(picture), *logs)
    assert out.returncode == 0, out.stderr
    chunks = png_chunks(picture.read_bytes())
    width, height = struct.unpack(">II", chunks["IHDR"][0][:8])
    assert width >= 600 and height >= 450
    (text,) = [c for c in chunks.get("tEXt", []) if c.startswith(b"qqfilter\0")]
    data = json.loads(text.split(b"\0", 1)[1])
    assert data == {
        _day(DAY1): {
            "accepted": 1,
            "reject Reject::DATA::MIME_Attach": 1,
            "reject Reject::DATA::Invalid_Size": 1,
        },
        _day(DAY1 + 86400): {
            "accepted": 1,
            "reject Reject::DATA::MIME_Attach": 2,
            "tempfail clamd": 1,
        },
    }


def png_chunks(data: bytes) -> dict[str, list[bytes]]:
    """The chunks of a PNG, checked: signature, and each chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[str, list[bytes]] = {}
    position = 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.setdefault(kind.decode("ascii"), []).append(body)
        position += 12 + length
    assert "IEND" in chunks
    return chunks


SEND_LOG = """\
new msg 100
info msg 100: bytes 900 from <spammer@forged.example> qp 500 uid 82
starting delivery 1: msg 100 to local nobody@example.org
delivery 1: failure: Sorry,_no_mailbox_here_by_that_name._(#5.1.1)/
bounce msg 100 qp 501
end msg 100
new msg 101
info msg 101: bytes 1500 from <> qp 501 uid 81
starting delivery 2: msg 101 to remote victim@innocent.example
delivery 2: failure: 550_no_such_user/
end msg 101
new msg 102
info msg 102: bytes 700 from <> qp 777 uid 82
starting delivery 3: msg 102 to local bob@example.org
delivery 3: success: did_1+0+0/
end msg 102
"""


def test_qmail_send_log_shows_the_bounces_this_server_sent(tmp_path):
    """Only bounces qmail-send generated count, not bounces received from elsewhere."""
    log = tmp_path / "send"
    log.write_text(
        "".join(f"{tai64n(DAY1 + i)} {line}\n" for i, line in enumerate(SEND_LOG.splitlines()))
    )
    data = json.loads(stats("--json", str(log)).stdout)
    assert data["bounces"] == {
        "generated": {_day(DAY1): 1},
        "results": {_day(DAY1): {"failure": 1}},
        "recipients": {"victim@innocent.example": 1},
    }
    text = stats(str(log)).stdout
    assert f"{_day(DAY1):<17} {1:>12} {0:>10} {1:>7} {0:>9}" in text
    assert "victim@innocent.example" in text
    assert "refusals by group" not in text  # no line of qqfilter's: no block of zeros


def test_a_missing_log_is_an_error_with_its_name(tmp_path):
    out = stats(str(tmp_path / "nope"))
    assert out.returncode == 1
    assert "nope" in out.stderr


def test_only_qqfilters_own_lines_count_not_its_words_inside_others(tmp_path):
    """A sender's address in qmail-send's line can say ``qqfilter: verdict=drop``, or be
    JSON: neither is qqfilter's line (its tag is at the line's start, after the stamp)."""
    log = tmp_path / "send"
    log.write_text(
        f"{tai64n(DAY1)} info msg 7: bytes 9 from <qqfilter: verdict=drop@x.example> qp 1 uid 8\n"
        f'{tai64n(DAY1)} info msg 8: bytes 9 from <{{"verdict":"drop"}}@x.example> qp 2 uid 8\n'
        f'{tai64n(DAY1)} tcpserver: 1 qqfilter: verdict=drop {{"verdict":"drop"}}\n'
        f"{tai64n(DAY1)} qqfilter: pid=1 verdict=accept code=0\n"
        f'{tai64n(DAY1)} {{"pid":2,"verdict":"reject","code":31,"check":"size"}}\n'
        "qqfilter: pid=3 verdict=accept code=0\n"
    )
    data = json.loads(stats("--json", str(log)).stdout)
    assert data["totals"] == {"accept": 2, "reject": 1}


def test_a_compressed_log_cut_short_gives_the_lines_before_and_says_so(tmp_path):
    """A rotation being gzip'ed as stats runs (or damaged): what is there is counted."""
    lines = "".join(
        f"{tai64n(DAY1 + i)} qqfilter: pid={i} verdict=accept code=0\n" for i in range(5000)
    )
    whole = gzip.compress(lines.encode())
    half = tmp_path / "@half.s.gz"
    half.write_bytes(whole[: len(whole) // 2])
    damaged = tmp_path / "@damaged.s.gz"
    damaged.write_bytes(whole[:100] + bytes(50) + whole[150:])
    not_gzip = tmp_path / "@plain.s.gz"
    not_gzip.write_text(lines)
    both = tmp_path / "@two-members.s.gz"  # `cat a.gz b.gz`, and gzip's zero padding
    both.write_bytes(whole + whole + bytes(512))
    out = stats("--json", str(half), str(damaged), str(not_gzip), str(both))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    data = json.loads(out.stdout)
    assert 10_000 < data["totals"]["accept"] < 15_000
    cut = out.stderr.splitlines()
    assert cut[0] == (
        f"qqfilter: {half}: cut short (compressed data ends early): counted the lines before"
    )
    assert cut[1].startswith(f"qqfilter: {damaged}: cut short (not gzip data, or damaged: ")
    assert cut[2].startswith(f"qqfilter: {not_gzip}: cut short (not gzip data, or damaged: ")
    assert len(cut) == 3
    assert len(data["cut_short"]) == 3
    text = stats(str(half))
    assert text.returncode == 0 and "cut short" in text.stderr and "total: " in text.stdout


def test_a_stamp_out_of_range_is_an_unreadable_line(tmp_path):
    log = tmp_path / "current"
    log.write_text(
        "@ffffffffffffffff00000000 qqfilter: pid=1 verdict=accept\n"
        "@000000000000000000000000 qqfilter: pid=2 verdict=accept\n"
        f"{tai64n(DAY1)} qqfilter: pid=3 verdict=accept\n"
        "@4000000069 +_12 qqfilter: pid=4 verdict=reject\n"  # no stamp: counted, no time
    )
    out = stats("--json", str(log))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["unreadable"] == {"time stamp out of range": 2}
    assert data["totals"] == {"accept": 1}
    text = stats("--by", "hour", str(log))
    assert "unreadable lines: 2 (2 time stamp out of range)" in text.stdout
    mrtg = stats("--mrtg", "mx", "--window", "0", str(log))
    assert mrtg.stdout.splitlines() == ["1", "0", "0:00", "mx"]
    assert "unreadable lines: 2" in mrtg.stderr


def test_json_nested_too_deep_is_an_unreadable_line(tmp_path):
    log = tmp_path / "current"
    log.write_text(
        '{"verdict": ' + "[" * 50_000 + "\n" + '{"verdict": "accept", "pid": 1}\n'
        '{"verdict": "reject", "notes": {"a": [1]}}\n'  # not qqfilter's: values are flat
    )
    out = stats("--json", str(log))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["unreadable"] == {"JSON nested too deep": 1}
    assert data["totals"] == {"accept": 1, "reject": 1}


def test_a_gzip_bomb_line_is_skipped_in_bounded_memory(tmp_path):
    """One line of 256 MB from 256 KB of gzip (the finding: 1.5 GB from 2 MB): read in
    chunks, skipped as it goes by; the lines around it are counted."""
    line = f"{tai64n(DAY1)} qqfilter: pid=1 verdict=accept\n".encode()
    member = gzip.compress(b"a" * (16 << 20))
    bomb = tmp_path / "@bomb.s.gz"
    bomb.write_bytes(gzip.compress(line) + member * 16 + gzip.compress(b"\n" + line))
    peak = tmp_path / "peak"
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("peak_rss.py")),
            QQFILTER,
            "stats",
            "--json",
            str(bomb),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PEAK_RSS_FILE": str(peak)},
        timeout=60,
    )
    assert int(peak.read_text()) < 64 * 1024, peak.read_text()
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["totals"] == {"accept": 2}
    assert data["unreadable"] == {"longer than 65536 bytes": 1}


def test_a_bounce_number_reused_by_a_later_message_is_not_a_bounce(tmp_path):
    """qmail's message numbers are inode numbers: after ``end msg``, the number is free."""
    later = (
        "new msg 101\ninfo msg 101: bytes 80 from <alice@example.com> qp 900 uid 81\n"
        "starting delivery 9: msg 101 to remote friend@elsewhere.example\n"
        "delivery 9: success: ok/\nend msg 101\n"
    )
    log = tmp_path / "send"
    log.write_text(
        "".join(
            f"{tai64n(DAY1 + i)} {text}\n" for i, text in enumerate((SEND_LOG + later).splitlines())
        )
    )
    data = json.loads(stats("--json", str(log)).stdout)
    assert data["bounces"]["recipients"] == {"victim@innocent.example": 1}
    assert data["bounces"]["results"] == {_day(DAY1): {"failure": 1}}


# the reader of logs, on any bytes


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_log_lines_are_read_alike_in_any_chunks_and_never_raise(data, cuts):
    """Any bytes, cut into any chunks, give the same lines; counting them never raises."""
    pieces, last = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    whole = [(line.time, line.text, line.why) for line in logread._lines(iter([data]))]
    chunked = [(line.time, line.text, line.why) for line in logread._lines(iter(pieces))]
    assert whole == chunked
    assert len(whole) <= data.count(b"\n") + 1
    counted = Stats("hour")
    for line in logread._lines(iter(pieces)):
        counted.feed(line)
        counted.period(line.time)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda stamp, rest: "@" + stamp + rest,
            st.text("0123456789abcdefABCDEF +_-", min_size=24, max_size=24),
            st.text(max_size=100),
        ),
        st.builds(lambda rest: "qqfilter: " + rest, st.text(max_size=200)),
        st.builds(lambda rest: '{"verdict"' + rest, st.text(max_size=200)),
    )
)
def test_a_line_is_read_or_said_unreadable_never_an_exception(text):
    line = split_stamp(text)
    assert line.time is None or 0 <= line.time < logread.LATEST
    counted = Stats("day")
    counted.feed(line)
    counted.table()


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text(max_size=80), max_size=40), keep=st.floats(0, 1))
def test_gzip_cut_anywhere_gives_a_prefix_of_the_lines(lines, keep, tmp_path_factory):
    raw = "".join(line.replace("\n", " ") + "\n" for line in lines).encode()
    whole = gzip.compress(raw)
    cut = whole[: int(len(whole) * keep)]
    notes: list[str] = []
    got = list(logread._lines(logread._gunzip(io.BytesIO(cut), "x.gz", notes)))
    expected = list(logread._lines(iter([raw])))
    assert [g.text for g in got] == [e.text for e in expected[: len(got)]]
    assert bool(notes) == (0 < len(cut) < len(whole))


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 70, logread.CHUNK - 1, logread.CHUNK, logread.CHUNK + 1]),
        min_size=1,
        max_size=4,
    ),
    padding=st.integers(0, 3),
)
def test_gzip_members_one_after_another_read_as_their_concatenation(sizes, padding):
    """What ``cat a.gz b.gz`` makes, members of any size (around the chunk size too)."""
    parts = [(b"x" * 69 + b"\n") * (size // 70) + b"y" * (size % 70) for size in sizes]
    data = b"".join(gzip.compress(part) for part in parts) + bytes(padding)
    notes: list[str] = []
    got = b"".join(c for c in logread._gunzip(io.BytesIO(data), "x.gz", notes) if c)
    assert got == b"".join(parts)
    assert notes == []


# refusals by group, as s/qmail's qmail-mrtg groups them

GROUPED = [
    # (verdict, check, tag): (group, series)
    (("reject", "helo", "Reject::SNDR::Bad_Helo"), ("sender", "helo")),
    (("reject", "helo", "Reject::SNDR::DNS_Helo"), ("sender", "helo")),
    (("reject", "rdns", "Reject::SNDR::DNS_Rhost"), ("sender", "client")),
    (("reject", "dnsbl", "Reject::SNDR::DNSBL"), ("sender", "client")),
    (("reject", "dnsbl", "Reject::SNDR::RBLSMTPD"), ("sender", "client")),
    (("reject", "", "Reject::SNDR::Invalid_Relay"), ("sender", "client")),
    (("reject", "sender", "Reject::ORIG::Bad_Mailfrom"), ("originator", "bad")),
    (("reject", "sender", "Reject::ORIG::Invalid_Mailfrom"), ("originator", "bad")),
    (("reject", "sender", "Reject::ORIG::Local_Mailfrom"), ("originator", "bad")),
    (("reject", "sender", "Reject::ORIG::DNS_MF"), ("originator", "dns")),
    (("reject", "spf", "Reject::SPF::Fail"), ("originator", "spf")),
    (("reject", "", "Reject::RCPT::Bad_Rcptto"), ("recipient", "bad")),
    (("reject", "recipients", "Reject::RCPT::Toomany_Rcptto"), ("recipient", "bad")),
    (("reject", "recipients", "Reject::RCPT::Failed_Rcptto"), ("recipient", "failed")),
    (("reject", "mime", "Reject::DATA::Bad_MIME"), ("base64", "mime")),
    (("reject", "mime", "Reject::DATA::Bad_Loader"), ("base64", "loader")),
    (("reject", "clamd", "Reject::DATA::Virus_Infected"), ("data", "virus")),
    (("reject", "qhpsi", "Reject::DATA::Virus_Infected"), ("data", "virus")),
    (("reject", "spamd", "Reject::DATA::Spam_Message"), ("data", "spam")),
    (("drop", "rspamd", "Reject::DATA::Spam_Message"), ("data", "spam")),  # a drop is refused
    (("reject", "mime", "Reject::DATA::MIME_Attach"), ("data", "attachment")),
    (("reject", "size", "Reject::DATA::Invalid_Size"), ("data", "size")),
    # no tag: the check's name places it
    (("reject", "helo", ""), ("sender", "helo")),
    (("reject", "dnsbl", ""), ("sender", "client")),
    (("reject", "sender", ""), ("originator", "bad")),
    (("reject", "recipients", ""), ("recipient", "failed")),
    (("reject", "clamd", ""), ("data", "virus")),
    # a tag of a known family, unknown: the group's "other"; a family none has: by check
    (("reject", "helo", "Reject::SNDR::Greetdelay"), ("sender", "other")),
    (("reject", "spamd", "Reject::DATA::Bad_Header"), ("data", "other")),
    (("reject", "spf", "Reject::XYZ::Odd"), ("originator", "spf")),
    # nothing places it: the group "other", under what was logged
    (("reject", "", "Reject::XYZ::Odd"), ("other", "Reject::XYZ::Odd")),
    (("drop", "newcheck", ""), ("other", "newcheck")),
    (("reject", "", ""), ("other", "untagged")),
]
NOT_REFUSED = [
    ("accept", "", ""),
    ("accept", "clamd", ""),  # QQF_SCANERROR=accept: let through, not refused
    ("tempfail", "helo", ""),
    ("tempfail", "clamd", "Reject::DATA::Virus_Infected"),  # a tag does not make it a refusal
    ("tempfail", "spf", "Reject::SPF::Fail"),
    ("error", "", ""),
]


def log_lines(rows, start: int = DAY1, style: str = "text", step: int = 60) -> str:
    """qqfilter's own log lines (qqfilter.logline writes them), stamped as multilog does."""
    out = []
    for i, (verdict, check, tag) in enumerate(rows):
        fields = {
            "pid": 100 + i,
            "verdict": verdict,
            "code": 31 if verdict == "reject" else 0,
            "check": check,
            "tag": tag,
            "reason": "as said" if verdict != "accept" else "",
            "ip": "192.0.2.7",
            "from": "<alice@example.com>",
            "rcpts": 1,
            "size": 396,
            "ms": 4,
        }
        out.append(f"{tai64n(start + i * step)} {format_line(fields, style)}\n")
    return "".join(out)


def expected_groups(places) -> dict[str, dict[str, int]]:
    from qqfilter.tools.stats import groups

    found = groups.empty()
    for group, series in places:
        row = found.setdefault(group, {})
        row[series] = row.get(series, 0) + 1
    return found


@pytest.mark.parametrize("style", ["text", "json"])
def test_each_refusal_counts_in_its_group_and_series(tmp_path, style):
    log = tmp_path / "current"
    log.write_text(log_lines([row for row, _ in GROUPED] + NOT_REFUSED, style=style))
    out = stats("--json", str(log))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["groups"] == expected_groups(place for _, place in GROUPED)
    assert list(data["groups"]) == [
        "sender",
        "originator",
        "recipient",
        "base64",
        "data",
        "other",
    ]
    assert list(data["groups"]["other"]) == ["Reject::XYZ::Odd", "newcheck", "untagged"]
    refusals = sum(n for series in data["groups"].values() for n in series.values())
    assert refusals == len(GROUPED) == data["totals"]["reject"] + data["totals"]["drop"]


def test_tempfails_accepts_and_errors_are_not_refusals(tmp_path):
    log = tmp_path / "current"
    log.write_text(log_lines(NOT_REFUSED * 3))
    data = json.loads(stats("--json", str(log)).stdout)
    assert data["totals"] == {"accept": 6, "tempfail": 9, "error": 3}
    assert data["groups"] == expected_groups([])
    assert "other" not in data["groups"]
    assert data["groups_by_period"] == {}
    assert stats("--mrtg", "data", "--window=0", str(log)).stdout.splitlines()[:2] == ["0", "0"]


def test_groups_per_period_in_json_and_text(tmp_path):
    day1 = [("reject", "spamd", "Reject::DATA::Spam_Message")] * 2 + [
        ("reject", "helo", "Reject::SNDR::Bad_Helo"),
        ("tempfail", "clamd", ""),
    ]
    day2 = [
        ("reject", "recipients", "Reject::RCPT::Failed_Rcptto"),
        ("drop", "clamd", "Reject::DATA::Virus_Infected"),
        ("accept", "", ""),
    ]
    log = tmp_path / "current"
    log.write_text(log_lines(day1) + log_lines(day2, start=DAY1 + 86400))
    data = json.loads(stats("--json", str(log)).stdout)
    first, second = _day(DAY1), _day(DAY1 + 86400)
    assert data["groups_by_period"] == {
        first: {"sender": {"helo": 1}, "data": {"spam": 2}},
        second: {"recipient": {"failed": 1}, "data": {"virus": 1}},
    }
    assert data["groups"]["data"] == {"virus": 1, "spam": 2, "attachment": 0, "size": 0}
    text = stats(str(log)).stdout
    block = text[text.index("refusals by group") :].splitlines()
    assert block == [
        "refusals by group (verdicts reject and drop):",
        f"{'period':<17} {'group':<11} series",
        f"{first:<17} {'sender':<11} helo 1",
        f"{first:<17} {'data':<11} spam 2",
        f"{second:<17} {'recipient':<11} failed 1",
        f"{second:<17} {'data':<11} virus 1",
        f"{'all':<17} {'sender':<11} client 0  helo 1",
        f"{'all':<17} {'originator':<11} bad 0  dns 0  spf 0  dmarc 0",
        f"{'all':<17} {'recipient':<11} bad 0  failed 1",
        f"{'all':<17} {'base64':<11} mime 0  loader 0",
        f"{'all':<17} {'data':<11} virus 1  spam 2  attachment 0  size 0",
    ]
    hourly = json.loads(stats("--json", "--by", "hour", str(log)).stdout)
    assert list(hourly["groups_by_period"]) == [f"{first} 00:00", f"{second} 00:00"]


MRTG_LOG = (
    [("reject", "rdns", "Reject::SNDR::DNS_Rhost")] * 1
    + [("reject", "helo", "Reject::SNDR::Bad_Helo")] * 2
    + [("reject", "sender", "Reject::ORIG::Invalid_Mailfrom")] * 3
    + [("reject", "sender", "Reject::ORIG::DNS_MF")] * 4
    + [("reject", "spf", "Reject::SPF::Fail")] * 9  # originator, but not in its MRTG pair
    + [("reject", "", "Reject::RCPT::Bad_Rcptto")] * 5
    + [("reject", "recipients", "Reject::RCPT::Failed_Rcptto")] * 6
    + [("reject", "mime", "Reject::DATA::Bad_MIME")] * 7
    + [("reject", "mime", "Reject::DATA::Bad_Loader")] * 8
    + [("reject", "clamd", "Reject::DATA::Virus_Infected")] * 10
    + [("drop", "spamd", "Reject::DATA::Spam_Message")] * 11
    + [("reject", "mime", "Reject::DATA::MIME_Attach")] * 12  # data, not in its MRTG pair
    + [("tempfail", "clamd", "")] * 13
    + [("accept", "", "")] * 14
)


@pytest.mark.parametrize(
    ("selector", "lines"),
    [
        ("sender", ["1", "2", "sender"]),  # as qmail-mrtg -c: the client (relay), then HELO
        ("originator", ["3", "4", "originator"]),
        ("recipient", ["5", "6", "recipient"]),
        ("base64", ["7", "8", "base64"]),
        ("data", ["10", "11", "data"]),  # as qmail-mrtg -g: virus, then spam
        ("c", ["1", "2", "sender"]),
        ("d", ["3", "4", "originator"]),
        ("e", ["5", "6", "recipient"]),
        ("f", ["7", "8", "base64"]),
        ("g", ["10", "11", "data"]),
        ("-c", ["1", "2", "sender"]),
        ("mx1.example.org", ["14", str(len(MRTG_LOG) - 14), "mx1.example.org"]),
    ],
)
def test_mrtg_for_a_group_prints_its_two_series(tmp_path, selector, lines):
    log = tmp_path / "current"
    log.write_text(log_lines(MRTG_LOG, step=10))
    span = (len(MRTG_LOG) - 1) * 10
    out = stats(f"--mrtg={selector}", "--window", "0", str(log))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        *lines[:2],
        f"{span // 3600}:{span % 3600 // 60:02d}",
        lines[2],
    ]


def test_the_groups_table_places_every_tag_once():
    """One table: each tag, family and check in one series only; two series at least for
    MRTG; qmail-mrtg's letters, each once; and it places what it lists where it lists it."""
    from qqfilter.tools.stats import groups

    seen: list[str] = []
    for group in groups.GROUPS:
        assert len(group.series) >= 2
        assert groups.find(group.name) is groups.find(group.letter) is group
        for series in group.series:
            assert series.name != groups.OTHER
            seen += list(series.tags) + [f"check {c}" for c in series.checks]
            for tag in series.tags:
                probe = tag + "Anything" if tag.endswith("::") else tag
                assert groups.place(probe, "") == (group.name, series.name)
            for check in series.checks:
                assert groups.place("", check) == (group.name, series.name)
        for family in group.families:
            seen.append(family)
            assert groups.place(family + "New_Tag", "") == (group.name, groups.OTHER)
    assert len(seen) == len(set(seen))
    assert [g.letter for g in groups.GROUPS] == list("cdefg")
    assert groups.find("sndr") is None and groups.find("h") is None


def test_every_tag_qqfilter_logs_has_a_group():
    """The tags the checks write (their source says ``Reject::...``) are all in the table."""
    import re

    from qqfilter.tools.stats import groups

    root = Path(__file__).resolve().parent.parent / "qqfilter" / "checks"
    tags = set()
    for source in root.rglob("*.py"):
        text = source.read_text()
        tags |= set(re.findall(r"Reject::[A-Z]+::[A-Za-z_]+", text))
        tags |= {f"Reject::DATA::{t}" for t in re.findall(r'_refuse\([^)]*"(\w+)"\)', text)}
    tags.add("Reject::DATA::MIME_Attach")  # the mime check's default tag
    assert tags
    for tag in sorted(tags):
        group, series = groups.place(tag, "")
        assert group != groups.OTHER and series != groups.OTHER, tag


def test_the_plot_by_group_carries_its_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    log = tmp_path / "current"
    log.write_text(log_lines([*MRTG_LOG, ("error", "", "")]))
    picture = tmp_path / "groups.png"
    out = stats("--plot", str(picture), "--plot-by", "group", str(log))
    assert out.returncode == 0, out.stderr
    day = _day(DAY1)
    assert plotted(picture) == {
        day: {
            "accepted": 14,
            "sender": 3,
            "originator": 16,
            "recipient": 11,
            "base64": 15,
            "data": 33,
            "tempfail": 13,
            "error": 1,
        }
    }
    from qqfilter.tools.stats import plot  # the same, in this process: quicker

    counted = Stats("day")
    counted.count(logread.Logs([str(log)]).read())
    by_tag = tmp_path / "tags.png"
    plot(counted, str(by_tag), "tag")
    assert len(plotted(by_tag)[day]) == 15  # accepted, 12 tags, tempfail clamd, error
    auto = tmp_path / "auto.png"  # more than 10 kinds of bar: by group
    plot(counted, str(auto))
    assert plotted(auto) == plotted(picture)


def plotted(picture: Path, name: str = "qqfilter") -> dict:
    """The numbers a plot drew, from its text chunk ``name``."""
    chunks = png_chunks(picture.read_bytes())
    (text,) = [c for c in chunks.get("tEXt", []) if c.startswith(name.encode() + b"\0")]
    return json.loads(text.split(b"\0", 1)[1])


# qqfilter's own text lines, read without shlex


FIELD_VALUES = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=" \"'=\\\t\x00\xe9\u20acabc<>@", max_size=12),
    st.integers(-5, 10**6),
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=len(FIELDS)),
    verdict=st.sampled_from(["accept", "reject", "tempfail", "drop", "error", 'a "b"']),
)
def test_qqfilters_lines_read_fast_as_shlex_reads_them(values, verdict):
    """Any fields through logline.format_line, read back: the fast reader takes every text
    line qqfilter writes (shlex is never asked), and gives what shlex gives, apostrophes in
    bare values aside (shlex took one for a quote: it now reads as the character it is)."""
    fields = {**values, "verdict": verdict}
    line = format_line(fields, "text")
    expected = {}
    apostrophe = False
    for key in FIELDS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        escaped = escape(str(value))
        bare = bool(escaped) and not any(c in escaped for c in ' "=\\')
        apostrophe |= bare and "'" in escaped
        expected[key] = re.sub(r'\\(["\\])', r"\1", escaped)  # as shlex unquotes
    with mock.patch.object(logread, "shlex_fields", side_effect=AssertionError("slow path")):
        assert logread.qqfilter_fields(line) == expected
        assert logread.counted_fields(line) == counted(expected)
    if not apostrophe:
        assert logread.shlex_fields(line) == expected
    as_json = logread.qqfilter_fields(format_line(fields, "json"))
    assert as_json == {k: str(v) for k, v in fields.items() if v is not None and v != ""}


def counted(fields: dict[str, str] | None) -> tuple[str, str, str, bool] | None:
    """What counting takes of a line's fields (``logread.counted_fields`` reads it quicker)."""
    if fields is None:
        return None
    get = fields.get
    return get("verdict", ""), get("tag", ""), get("check", ""), bool(get("fallback"))


VALUES = st.one_of(
    st.text(alphabet="abx:<>@.", max_size=6),  # bare, as qqfilter writes them
    st.builds(lambda v: '"' + v + '"', st.text(alphabet="ab =x'", max_size=5)),  # quoted
    st.text(alphabet="ab \"'=\\\tx", max_size=6),  # anything
)
WORDS = st.lists(
    st.one_of(
        st.builds(
            lambda key, sep, value: key + sep + value,
            st.sampled_from(["verdict", "verdict", "tag", "check", "fallback", "reason", ""]),
            st.sampled_from(["=", "=", "=", "==", ""]),
            VALUES,
        ),
        st.text(alphabet='"ab=\\ ', max_size=4),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(words=WORDS, joiner=st.sampled_from([" ", "  ", '" ', ' "']))
def test_what_is_counted_of_a_line_is_what_its_fields_say(words, joiner):
    """``counted_fields`` (no dict for most lines) against ``qqfilter_fields``, on any text."""
    for text in ("qqfilter: " + joiner.join(words), '{"verdict": "x", "tag": 1}'):
        try:
            expected = counted(logread.qqfilter_fields(text))
        except logread.Unreadable:
            with pytest.raises(logread.Unreadable):
                logread.counted_fields(text)
            continue
        assert logread.counted_fields(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "qqfilter: verdict='a b' tag=x",  # quotes qqfilter never writes
        'qqfilter: verdict=acc"ept" check=a"b c"',  # a quote inside a word
        'qqfilter: verdict="a""b" x=1',
        'qqfilter: "verdict=reject" tag=T',
        'qqfilter: verdict="reject" tag="a b"c',
        "qqfilter: verdict=accept\ttag=tabbed  double=space",
        'qqfilter: verdict=reject reason="not closed',
        'qqfilter: verdict=reject reason="it\'s" x=\\y',
        'qqfilter: a=b=c verdict=drop ="empty key" =',
    ],
)
def test_lines_the_fast_reader_does_not_take_read_as_shlex_reads_them(text):
    try:
        expected = logread.shlex_fields(text)
    except logread.Unreadable:
        with pytest.raises(logread.Unreadable):
            logread.text_fields(text)
        return
    assert logread.text_fields(text) == expected


def test_an_apostrophe_in_a_bare_value_is_a_character():
    assert logread.text_fields("qqfilter: verdict='accept' tag=x") == {
        "verdict": "'accept'",
        "tag": "x",
    }


def test_an_apostrophe_in_an_address_is_read_not_unreadable(tmp_path):
    """``from=<o'brien@example.ie>`` is a bare value; shlex made the whole line unreadable."""
    log = tmp_path / "current"
    log.write_text(
        f"{tai64n(DAY1)} qqfilter: pid=1 verdict=reject code=31 check=spf "
        f'tag=Reject::SPF::Fail reason="SPF fail" from=<o\'brien@example.ie> rcpts=1\n'
        f"{tai64n(DAY1 + 1)} qqfilter: pid=2 verdict=accept from=<o'brien@example.ie>\n"
    )
    data = json.loads(stats("--json", str(log)).stdout)
    assert data["totals"] == {"reject": 1, "accept": 1}
    assert data["unreadable"] == {}


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_lines_over_the_limit_are_skipped_alike_in_any_chunks(data, cuts):
    """With a limit of 20 bytes, long lines inside a chunk and across chunks alike."""
    pieces, last = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    expected = [
        (None, "", logread.TOO_LONG) if len(raw) > 20 else split_stamp(raw.decode(errors="replace"))
        for raw in (data[:-1] if data.endswith(b"\n") else data).split(b"\n")
    ]
    expected = [e if isinstance(e, tuple) else (e.time, e.text, e.why) for e in expected]
    if not data:
        expected = []
    with mock.patch.object(logread, "LINE_MAX", 20):
        got = [(line.time, line.text, line.why) for line in logread._lines(iter(pieces))]
    assert got == expected


# stamps other than TAI64N: tai64nlocal's, and syslog's


def stats_in(tz: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [QQFILTER, "stats", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "TZ": tz},
    )


def test_tai64nlocal_and_syslog_stamps(tmp_path):
    """tai64nlocal's local time (TZ, here an hour east of UTC), syslog's ISO 8601 with its
    offset, and the classic syslog stamp, with the program's tag read off."""
    log = tmp_path / "converted"
    log.write_text(
        "2026-11-24 10:00:00.123456789 qqfilter: pid=1 verdict=accept\n"  # 09:00 UTC
        "2026-11-24 10:59:59.999999999 qqfilter: pid=2 verdict=reject tag=Reject::SPF::Fail\n"
        "2026-11-24 11:00:00.000000000 tcpserver: status: 1/40\n"
        '2026-11-24T12:30:00.5+02:00 mx1 smtpd[7]: {"pid":3,"verdict":"accept"}\n'  # 10:30
        "2026-11-24T10:45:00Z mx1 qqfilter[8]: pid=4 verdict=drop check=spamd\n"  # its tag
        "2026-11-24T10:46:00Z mx1 smtpd[9]: qqfilter: pid=5 verdict=accept\n"
        "2026-11-24T10:47:00Z mx1 smtpd[9]: pid=6 verdict=accept\n"  # not qqfilter's
        "2026-13-24 10:00:00.000000000 qqfilter: pid=7 verdict=accept\n"  # no such month
    )
    data = json.loads(stats_in("CET-1", "--json", "--by", "hour", str(log)).stdout)
    rows = {(r["period"], r["verdict"], r["tag"]): r["count"] for r in data["counts"]}
    assert rows == {
        ("2026-11-24 09:00", "accept", ""): 1,
        ("2026-11-24 09:00", "reject", "Reject::SPF::Fail"): 1,
        ("2026-11-24 10:00", "accept", ""): 2,
        ("2026-11-24 10:00", "drop", "spamd"): 1,
    }
    assert data["unreadable"] == {"time stamp out of range": 1}


def test_a_classic_syslog_stamp_takes_its_files_year(tmp_path):
    """No year in ``Nov 24 10:00:00``: the file's (mtime) year, and December lines in a file
    last written in January are of the year before."""
    log = tmp_path / "maillog"
    log.write_text(
        "Dec 31 23:59:00 mx1 qqfilter[1]: qqfilter: pid=1 verdict=accept\n"
        "Jan  1 00:01:00 mx1 qqfilter[2]: qqfilter: pid=2 verdict=accept\n"
        "Jan  1 00:02:00 mx1 qmail: 1798761720.123456 bounce msg 100 qp 501\n"
        "Jan  1 00:02:01 mx1 qmail: 1798761721.123456 info msg 101: bytes 1 from <> qp 501 uid 1\n"
    )
    january = calendar.timegm((2027, 1, 1, 0, 5, 0))
    os.utime(log, (january, january))
    data = json.loads(stats_in("UTC", "--json", str(log)).stdout)
    rows = {(r["period"], r["verdict"]): r["count"] for r in data["counts"]}
    assert rows == {("2026-12-31", "accept"): 1, ("2027-01-01", "accept"): 1}
    assert data["bounces"]["generated"] == {"2027-01-01": 1}  # splogger's stamp dropped
    december = calendar.timegm((2027, 12, 31, 23, 59, 30))  # the file's year: 2027
    os.utime(log, (december, december))
    data = json.loads(stats_in("UTC", "--json", str(log)).stdout)
    assert {r["period"] for r in data["counts"]} == {"2027-01-01", "2027-12-31"}


def test_stamps_read_in_process():
    stamps = logread.Stamps(reference=calendar.timegm((2026, 11, 30, 0, 0, 0)))
    assert stamps.split("2026-11-24T10:00:00.25-01:30 h p: x") == (
        calendar.timegm((2026, 11, 24, 11, 30, 0)) + 0.25,
        "x",
        "",
    )
    assert stamps.split("2026-11-24T10:00:00 h p: x") == (None, "2026-11-24T10:00:00 h p: x", "")
    assert stamps.split("Nov 24 10:00:00 host")[1] == "host"  # no program: the rest
    assert stamps.split("Nov 32 10:00:00 h p: x")[2] == logread.OUT_OF_RANGE
    assert stamps.split("November is here")[0] is None


# the MRTG window


def test_mrtg_counts_the_last_305_seconds_before_now(tmp_path):
    now = time.time()
    log = tmp_path / "current"
    log.write_text(
        "".join(
            f"{tai64n(now - ago)} qqfilter: pid={n} verdict={verdict}\n"
            for n, (ago, verdict) in enumerate(
                [(1000, "accept"), (400, "reject"), (200, "accept"), (100, "reject"), (5, "accept")]
            )
        )
        + f"{tai64n(now + 3600)} qqfilter: pid=9 verdict=accept\n"  # later than now: not yet
        + "qqfilter: pid=10 verdict=accept\n"  # no time: in no window
    )
    assert stats("--mrtg", "mx", str(log)).stdout.splitlines() == ["2", "1", "0:05", "mx"]
    assert stats("--mrtg", "mx", "--window", "600", str(log)).stdout.splitlines() == [
        "2",
        "2",
        "0:10",
        "mx",
    ]
    whole = stats("--mrtg", "mx", "--window", "0", str(log)).stdout.splitlines()
    assert whole[:2] == ["5", "2"]
    assert whole[2] == "1:16"  # first to last stamped line: 1000 s ago to an hour ahead
    data = json.loads(stats("--json", "--window", "305", str(log)).stdout)
    assert data["totals"] == {"accept": 2, "reject": 1}
    assert data["window"].startswith("the last 305 s, from ")
    assert stats("--json", str(log)).returncode == 0
    assert json.loads(stats("--json", str(log)).stdout)["window"] == ""
    bad = stats("--window", "-5", str(log))
    assert bad.returncode == 2 and "not a number of seconds" in bad.stderr


# fallbacks of the resident client

FALLBACK = "resident server unreachable, handled in-process"


def test_fallbacks_are_counted_in_text_json_and_per_period(tmp_path):
    log = tmp_path / "current"
    log.write_text(
        f'{tai64n(DAY1 + 10)} qqfilter: pid=1 verdict=accept code=0 fallback="{FALLBACK}"\n'
        f"{tai64n(DAY1 + 20)} qqfilter: pid=2 verdict=accept code=0\n"
        f'{tai64n(DAY1 + 3600)} {{"pid":3,"verdict":"reject","fallback":"{FALLBACK}"}}\n'
        f'{tai64n(DAY1 + 86400)} qqfilter: pid=4 verdict=tempfail fallback="{FALLBACK}"\n'
        f"{tai64n(DAY1 + 86400)} tcpserver: fallback=not-ours\n"
    )
    data = json.loads(stats("--json", "--by", "hour", str(log)).stdout)
    assert data["fallbacks"] == 3
    first, second = _day(DAY1), _day(DAY1 + 86400)
    assert data["fallbacks_by_period"] == {
        f"{first} 00:00": 1,
        f"{first} 01:00": 1,
        f"{second} 00:00": 1,
    }
    text = stats(str(log)).stdout.splitlines()
    assert f"fallbacks: 3  ({stats_fallback_said()})" in text
    assert f"{first:<17} {2:>9}" in text and f"{second:<17} {1:>9}" in text
    plain = tmp_path / "plain"
    plain.write_text(f"{tai64n(DAY1)} qqfilter: pid=1 verdict=accept\n")
    assert json.loads(stats("--json", str(plain)).stdout)["fallbacks"] == 0
    assert f"fallbacks: 0  ({stats_fallback_said()})" in stats(str(plain)).stdout


def stats_fallback_said() -> str:
    from qqfilter.tools.stats import FALLBACK_SAID

    return FALLBACK_SAID


# the plot: every period on the axis, the share refused, a sane width


def test_a_month_by_the_hour_plots_narrow_with_its_outage_and_share(tmp_path):
    """720 hours, a day without mail in them: the figure stays under 2,000 pixels, the empty
    hours are drawn (as ``{}``), the share refused is stored beside the counts."""
    pytest.importorskip("matplotlib")
    from qqfilter.tools.stats import plot

    counted = Stats("hour")
    reads = []
    for hour in range(30 * 24):
        if 10 * 24 <= hour < 11 * 24:
            continue  # an outage: all of day 10
        when = DAY1 + hour * 3600
        reads.append((when, "qqfilter: pid=1 verdict=accept", ""))
        if hour % 4 == 0:
            reads.append((when + 1, "qqfilter: pid=2 verdict=reject tag=Reject::SPF::Fail", ""))
    reads.append((None, "qqfilter: pid=3 verdict=accept", ""))  # no time: not drawn
    counted.count(reads)
    picture = tmp_path / "month.png"
    started = time.perf_counter()
    plot(counted, str(picture))
    took = time.perf_counter() - started
    assert took < 10, took
    chunks = png_chunks(picture.read_bytes())
    width, height = struct.unpack(">II", chunks["IHDR"][0][:8])
    assert 1000 < width < 2000 and height == 450
    data = plotted(picture)
    assert len(data) == 720
    outage = [p for p, row in data.items() if not row]
    assert outage == [counted.period(DAY1 + (10 * 24 + h) * 3600) for h in range(24)]
    assert data[counted.period(DAY1)] == {"accepted": 1, "reject Reject::SPF::Fail": 1}
    refused = plotted(picture, "qqfilter-refused")
    assert refused[counted.period(DAY1)] == 50.0
    assert refused[counted.period(DAY1 + 3600)] == 0.0
    assert refused[outage[0]] is None
