"""Properties of the parsers the hardening touched: any input gets an answer or the one
exception the caller handles, never another, and sizes, counts and depths stay bounded.

The resident wire format (whoever can connect writes its bytes), the users/cdb reader (a
damaged file is 55), the spool's keep limit (QQF_MAXSIZE), and the bounded setting parser.
Each runs on what hypothesis makes; the end-to-end behaviour is tested where each lives.
"""

import io
import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter.checks.recipients import mailboxes
from qqfilter.exitcodes import CONFIG_ERROR, QueueError
from qqfilter.resident import wire
from qqfilter.settings import bounded
from qqfilter.spool import Spool

NAMES = st.text(st.characters(min_codepoint=65, max_codepoint=90), min_size=1, max_size=12)
VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40)


@settings(max_examples=300)
@given(st.binary(max_size=4096))
def test_any_request_packet_is_a_request_or_a_value_error(data):
    try:
        request = wire.unpack_request(data)
    except ValueError:
        return
    assert len(request.environ) <= wire.MAX_VARIABLES
    assert len(request.pipes) <= wire.MAX_PIPES


@settings(max_examples=200)
@given(
    st.integers(1, 4_194_304),
    st.lists(st.integers(0, 9), max_size=wire.MAX_PIPES, unique=True),
    st.dictionaries(NAMES, VALUES, max_size=50),
)
def test_a_request_reads_back_as_it_was_written(pid, pipes, environ):
    request = wire.unpack_request(wire.pack_request(pid, pipes, environ))
    assert (request.pid, set(request.pipes), request.environ) == (pid, set(pipes), environ)


@settings(max_examples=200)
@given(st.binary(max_size=70_000))
def test_any_answer_packet_is_an_answer_or_a_value_error(data):
    try:
        answer = wire.unpack_answer(data)
    except ValueError:
        return
    assert answer.kind in (wire.EXEC, wire.EXIT)
    assert isinstance(answer.code, int) and isinstance(answer.errfd, int)


def _cdb_file(tmp_path, records):
    from cdblib import Writer

    path = tmp_path / "users.cdb"
    with open(path, "wb") as out:
        writer = Writer(out)
        for key, value in records.items():
            writer.put(key, value)
        writer.finalize()
    return path


KEYS = st.binary(min_size=1, max_size=20)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(KEYS, st.binary(max_size=30), max_size=40), KEYS)
def test_the_cdb_reader_finds_what_cdblib_wrote(tmp_path, records, absent):
    fd = os.open(_cdb_file(tmp_path, records), os.O_RDONLY)
    table = mailboxes._Cdb(fd, "users/cdb")
    try:
        for key, value in records.items():
            assert table.get(key) == value
        if absent not in records:
            assert table.get(absent) is None
    finally:
        table.close()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(KEYS, st.binary(max_size=30), min_size=1, max_size=20),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    st.integers(0, 1 << 16),
    KEYS,
)
def test_a_damaged_cdb_is_a_configuration_error_never_another(tmp_path, records, damage, cut, key):
    path = _cdb_file(tmp_path, records)
    data = bytearray(path.read_bytes())
    for at, value in damage:
        data[at % len(data)] = value
    path.write_bytes(bytes(data[: max(0, len(data) - cut % (len(data) + 1))]))
    fd = os.open(path, os.O_RDONLY)
    try:
        table = mailboxes._Cdb(fd, "users/cdb")
        for probe in (key, *records):
            found = table.get(probe)
            assert found is None or len(found) <= mailboxes.CDB_VALUE_MAX
    except QueueError as exc:
        assert exc.code == CONFIG_ERROR
        assert "damaged" in exc.reason
    finally:
        os.close(fd)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 600_000), st.integers(0, 700_000))
def test_the_spool_keeps_at_most_its_limit_and_counts_all(length, keep):
    read, write = os.pipe()
    data = os.urandom(length)
    pid = os.fork()
    if pid == 0:
        os.close(read)
        with io.FileIO(write, "w") as out:
            out.write(data)
        os._exit(0)
    os.close(write)
    try:
        spool = Spool.receive(read, os.environ.get("TMPDIR", "/tmp"), keep=keep)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    try:
        assert spool.received == length
        assert spool.size == (min(length, keep) if keep else length)
        assert spool.read(0, spool.size) == data[: spool.size]
    finally:
        spool.close()


@given(st.one_of(st.integers(-10, 10**6), st.text(max_size=12), st.booleans(), st.none()))
def test_a_bounded_setting_is_in_its_range_or_refused(value):
    parse = bounded(1, 100)
    try:
        number = parse(value)
    except ValueError:
        return
    assert 1 <= number <= 100


def test_the_bounded_parser_names_its_range():
    with pytest.raises(ValueError, match="from 0 to 10"):
        bounded(0, 10)("11")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.data())
def test_the_message_handed_on_is_the_spool_with_exactly_its_edits(data, draw):
    from qqfilter.handoff import message_fd

    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=8)))
    pairs = list(zip(cuts[::2], cuts[1::2], strict=False))
    edits = tuple((start, end, draw.draw(st.binary(max_size=20))) for start, end in pairs)
    expected, at = b"", 0
    for start, end, new in edits:
        expected += data[at:start] + new
        at = end
    expected += data[at:]
    directory = os.environ.get("TMPDIR", "/tmp")
    fd = spool_file(data, directory)
    spool = Spool(fd, len(data), len(data))
    out = message_fd(spool, b"X-Added: yes\n", directory, edits)
    try:
        assert os.read(out, len(expected) + 100) == b"X-Added: yes\n" + expected
    finally:
        os.close(out)
        spool.close()


def spool_file(data: bytes, directory: str) -> int:
    from qqfilter.spool import anonymous_file, write_all

    fd = anonymous_file(directory)
    write_all(fd, data, directory)
    return fd


@given(st.binary(max_size=2000))
def test_header_fields_are_found_in_order_without_overlap(data):
    from qqfilter import headers

    directory = os.environ.get("TMPDIR", "/tmp")
    spool = Spool(spool_file(data, directory), len(data), len(data))
    try:
        found = headers.fields(spool)
    finally:
        spool.close()
    at = 0
    for _name, start, value_at, end in found:
        assert at <= start <= value_at <= end <= len(data)
        at = end


def test_two_checks_asking_the_same_edit_make_it_once():
    """spamd and rspamd both flag a message with QQF_SPAMSUBJECT set: one prefix, not two;
    an edit reaching into an earlier one is dropped (the copy around edits never goes back)."""
    from qqfilter.checks import Finding
    from qqfilter.policy import judge
    from qqfilter.settings import Settings

    prefix = (30, 30, b"[SPAM] ")
    findings = [
        Finding("spamd", Finding.CLEAN, edits=(prefix,)),
        Finding("rspamd", Finding.CLEAN, edits=(prefix, (10, 20, b""), (15, 25, b""))),
    ]
    assert judge(findings, Settings.defaults()).edits == ((10, 20, b""), prefix)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20), st.binary(max_size=3))))
def test_the_edits_handed_on_never_overlap(raw):
    from qqfilter.checks import Finding
    from qqfilter.policy import judge
    from qqfilter.settings import Settings

    edits = tuple((start, start + length, new) for start, length, new in raw)
    kept = judge([Finding("x", Finding.CLEAN, edits=edits)], Settings.defaults()).edits
    assert list(kept) == sorted(kept)
    for before, after in itertools.pairwise(kept):
        assert before[1] <= after[0] and before[0] != after[0]
