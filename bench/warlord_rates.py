"""How often ordinary text matches WarLord's loader fragments (BADLOADERTYPE=M) by chance.

    .venv/bin/python bench/warlord_rates.py [--examples N] [DIR_OR_FILE ...]

Each text file is base64-encoded as a mail program sends an attachment (76-character lines)
and searched for the entries of docs/control/badloadertypes with qqfilter's own pattern
(warlord.Rules), as BADLOADERTYPE=M does. Printed for each corpus: its files and megabytes of
text, the matches per megabyte of text, the share of files that would be refused, and for each
entry its matches at each base64 character alignment (a position modulo 4 in the encoded
text). An entry stands for a piece of text at one alignment only ("Mi5kb" is "2.d" followed
by l, m, n or o, starting a 3-byte group): its matches there are text that holds that piece
("2.doc"); matches at the other three alignments are bits that happen to line up.

The corpora: this repository's docs (*.md) and Python files; the Python standard library's
source; the plain-text documentation of the installed Debian packages (/usr/share/doc,
.gz files decompressed, duplicates counted once). Arguments replace them with one corpus of
the files given (directories are searched for *.md, *.txt, *.py, *.csv, *.html, *.gz).
"""

import argparse
import base64
import gzip
import hashlib
import re
import sys
import sysconfig
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qqfilter.checks.mime import warlord  # noqa: E402

LINE = 76
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TEXT_BYTES = bytes([9, 10, 13, *range(32, 127)])
SKIP = frozenset({".venv", "build", ".git", "__pycache__", ".mypy_cache", ".ruff_cache"})
SUFFIXES = (".md", ".txt", ".py", ".csv", ".html", ".gz")


def entries() -> frozenset[bytes]:
    """docs/control/badloadertypes read as qqfilter reads control/badloadertypes."""
    text = (ROOT / "docs" / "control" / "badloadertypes").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return warlord.entries(lines, warlord.FRAGMENT)


def meaning(entry: bytes, alignment: int) -> str:
    """The text ``entry`` stands for at base64 character ``alignment`` (0-3): each byte it
    covers, as the one ASCII character it must be, ``.`` for any, or the set it may be;
    "" when no ASCII text encodes to it there."""
    value = 0
    for char in entry:
        value = value << 6 | ALPHABET.index(char)
    start, end = 6 * alignment, 6 * alignment + 6 * len(entry)
    shown = []
    for byte in range(start // 8, (end - 1) // 8 + 1):
        low, high = max(start, 8 * byte), min(end, 8 * byte + 8)
        width = high - low
        shift = 8 * byte + 8 - high
        mask = ((1 << width) - 1) << shift
        want = ((value >> (end - high)) & ((1 << width) - 1)) << shift
        options = bytes(b for b in TEXT_BYTES if b & mask == want)
        if not options:
            return ""
        if options == TEXT_BYTES:
            shown.append(".")
        elif len(options) == 1:
            shown.append(options.decode())
        else:
            shown.append("[" + _ranges(options) + "]")
    return "".join(shown)


def _ranges(options: bytes) -> str:
    """``options`` as a character class: runs of four or more as ``a-z``."""
    runs: list[list[int]] = []
    for byte in options:
        if runs and byte == runs[-1][-1] + 1:
            runs[-1].append(byte)
        else:
            runs.append([byte])
    return (
        "".join(
            f"{chr(run[0])}-{chr(run[-1])}" if len(run) >= 4 else bytes(run).decode()
            for run in runs
        )
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
    )


def files_under(path: Path, suffixes: tuple[str, ...], skip: frozenset[str] = SKIP) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.name.endswith(suffixes) and not skip.intersection(p.parts)
    )


def read_text(path: Path) -> bytes | None:
    """The file's bytes when it is text (gzip'ed text decompressed), else None."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if not data or b"\0" in data[:8192]:
        return None
    return data


def corpora(arguments: list[str]) -> dict[str, list[Path]]:
    if arguments:
        found = [f for a in arguments for f in files_under(Path(a), SUFFIXES)]
        return {"given files": found}
    repo = [*files_under(ROOT / "docs", (".md",)), *files_under(ROOT, (".py",))]
    stdlib = files_under(Path(sysconfig.get_paths()["stdlib"]), (".py",), SKIP | {"site-packages"})
    docs = files_under(Path("/usr/share/doc"), ("copyright", ".txt", ".md", ".gz"))
    docs += files_under(Path("/usr/share/common-licenses"), ("",))
    return {
        "this repository (docs/*.md, *.py)": repo,
        "Python standard library (*.py)": stdlib,
        "Debian package docs (/usr/share/doc)": docs,
    }


def measure(name: str, paths: list[Path], pattern: re.Pattern[bytes], examples: int) -> None:
    seen: set[bytes] = set()
    files = refused = 0
    size = 0
    by_alignment: Counter[tuple[bytes, int]] = Counter()
    shown: list[str] = []
    for path in paths:
        data = read_text(path)
        if data is None:
            continue
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        files += 1
        size += len(data)
        encoded = base64.encodebytes(data)  # 76 characters a line, as mail programs send
        hits = 0
        for found in pattern.finditer(encoded):
            offset = found.start() - found.start() // (LINE + 1)  # newlines not counted
            alignment = offset % 4
            by_alignment[(found.group(), alignment)] += 1
            hits += 1
            if len(shown) < examples:
                at = offset // 4 * 3
                context = data[max(0, at - 12) : at + 12].decode("utf-8", "replace")
                shown.append(f"{found.group().decode()} @{alignment} {path.name}: {context!r}")
        refused += bool(hits)
    megabytes = size / 1e6
    total = sum(by_alignment.values())
    print(f"\n{name}: {files} files, {megabytes:.1f} MB of text")
    if not files:
        return
    print(
        f"  {total} matches: {total / megabytes:.2f} per MB of text; "
        f"{refused} files refused ({100 * refused / files:.2f}% of files)"
    )
    for entry in sorted({e for e, _ in by_alignment}):
        counts = [by_alignment[(entry, a)] for a in range(4)]
        cells = "  ".join(f"@{a}: {c:5d}" for a, c in enumerate(counts))
        print(f"  {entry.decode()}  {cells}   ({sum(counts) / megabytes:.2f}/MB)")
    for line in shown:
        print("    " + line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="files or directories (default: the corpora)")
    parser.add_argument("--examples", type=int, default=8, help="matches to show per corpus")
    options = parser.parse_args()
    fragments = entries()
    rules = warlord.Rules(frozenset(), False, b"M", fragments)
    assert rules.loader_pattern is not None
    print("entries, and the ASCII text each stands for at each base64 alignment (@0-@3):")
    for fragment in sorted(fragments):
        texts = [f"@{a} {meaning(fragment, a)!r}" for a in range(4) if meaning(fragment, a)]
        print(f"  {fragment.decode()}: {', '.join(texts) or 'no ASCII text'}")
    # random data: each entry matches one position in 64^5; per 76-character line, the 72
    # positions where 5 characters fit (a fragment never spans a line end)
    random_rate = len(fragments) / 64**5 * 1e6 * 4 / 3 * (LINE - warlord.FRAGMENT + 1) / LINE
    print(f"random data (compressed, encrypted): {random_rate:.4f} matches per MB")
    for name, paths in corpora(options.paths).items():
        measure(name, paths, rules.loader_pattern, options.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
