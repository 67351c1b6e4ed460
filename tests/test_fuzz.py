"""Property-based tests of the envelope parser and of header stamping (hypothesis).

As in test_mime_properties: a fixed set of cases in the test command, and
``QQF_FUZZ_EXAMPLES=N`` for a long run that explores new ones.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qqfilter import envelope, handoff
from qqfilter.checks.spf.evaluation import RESULTS, Evaluation
from qqfilter.checks.spf.fields import received_spf, spf_result
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.shared import authres
from qqfilter.spool import Spool, anonymous_file, write_all

EXAMPLES = int(os.environ.get("QQF_FUZZ_EXAMPLES", "0"))
PROPERTY = settings(
    max_examples=EXAMPLES or 400,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ADDRESS = st.binary(max_size=300).filter(lambda b: b"\0" not in b)


@PROPERTY
@given(st.binary(max_size=3000))
def test_the_envelope_parser_answers_any_bytes_with_an_envelope_or_a_qmail_code(raw):
    try:
        parsed = envelope.parse(raw)
    except QueueError as exc:
        assert exc.code in (11, 54, 91)
        return
    assert raw.startswith(parsed.raw)
    assert parsed.raw.endswith(b"\0\0")
    assert envelope.serialize(parsed.sender, parsed.recipients) == parsed.raw


@PROPERTY
@given(ADDRESS, st.lists(ADDRESS, min_size=1, max_size=20))
def test_what_qmail_writes_is_read_back_unchanged(sender, recipients):
    raw = envelope.serialize(sender, recipients)
    parsed = envelope.parse(raw + b"trailing bytes qmail-queue ignores")
    assert (parsed.sender, parsed.recipients, parsed.raw) == (sender, recipients, raw)


TEXT = st.text(max_size=400)


@PROPERTY
@given(
    st.sampled_from(RESULTS),
    TEXT,
    TEXT,
    TEXT,
    TEXT,
    TEXT,
    TEXT,
    TEXT,
    st.binary(max_size=500),
)
def test_stamped_headers_are_well_formed_and_the_message_follows_unchanged(
    result, ip, sender, helo, domain, problem, mechanism, receiver, body
):
    stamped = Evaluation(
        result,
        client_ip=ip,
        sender=sender,
        helo=helo,
        identity="helo" if not sender else "mailfrom",
        domain=domain,
        problem=problem,
        mechanism=mechanism,
    )
    stamps = [received_spf(stamped, receiver), authres.field(receiver, (spf_result(stamped),))]
    block = render(stamps)
    lines = block.split(b"\n")
    assert lines[-1] == b""
    assert all(len(line) <= 998 for line in lines)
    assert all(32 <= c < 127 or c == 9 for line in lines for c in line)
    starts = [line.split(b":")[0] for line in lines[:-1] if not line.startswith(b"\t")]
    assert starts == [b"Received-SPF", b"Authentication-Results"]
    directory = os.environ.get("TMPDIR", "/tmp")
    fd = anonymous_file(directory)
    write_all(fd, body, directory)
    spool = Spool(fd, len(body), len(body))
    handed = handoff.message_fd(spool, block, directory)
    try:
        data = b""
        while chunk := os.read(handed, 65536):
            data += chunk
        assert data == block + body
    finally:
        if handed != spool.fd:
            os.close(handed)
        spool.close()
