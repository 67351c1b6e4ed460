"""``qqfilter stats`` on logs the filter itself wrote, stamped as multilog stamps them."""

import gzip
import json
import struct
import subprocess
import zlib

import pytest
from clamav import TEXT_PART, attachment, mime
from conftest import QQFILTER, envelope

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
    out = stats("--mrtg", "mx1.example.org", *logs)
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


def test_a_missing_log_is_an_error_with_its_name(tmp_path):
    out = stats(str(tmp_path / "nope"))
    assert out.returncode == 1
    assert "nope" in out.stderr
