"""The documentation says what the code does: docs/settings.md's tables (names, variables,
defaults, the values of the settings that take a word), attachments.md's default extension
list, and the man pages (qqfilter-settings(5) generated from the code and up to date;
qqfilter(8) renders cleanly and names every subcommand and exit code)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import QQFILTER, ROOT

from qqfilter import exitcodes
from qqfilter.checks.mime.kinds import KINDS
from qqfilter.settings import Setting, every_setting, words

SETTINGS_MD = ROOT / "docs" / "settings.md"
MAN = ROOT / "man"
EMPTY = object()
"""A default cell that says there is none ("none", "none (off)", "unset ..."): the code's
default must be an empty value."""


def _attachments_default_list() -> frozenset[str]:
    """The extension list attachments.md gives after "By default:", read as QQF_BLOCKEXT."""
    text = (ROOT / "docs" / "attachments.md").read_text()
    found = re.search(r"^By default: (.*?)\.\n\n", text, re.M | re.S)
    assert found, 'attachments.md has no "By default:" extension list'
    return words(found.group(1))


PROSE_DEFAULTS = {
    "`$TMPDIR`, else `/tmp`": lambda: os.environ.get("TMPDIR") or "/tmp",
    "the list in attachments.md": _attachments_default_list,
    "unset: qmail's limit (`databytes`, below)": lambda: 0,
    "all the kinds": lambda: frozenset(KINDS),
}
"""Default cells in words, and the value each stands for."""


def table_rows() -> list[tuple[str, list[str], list[str], str, str, str]]:
    """Each row of settings.md's setting tables: (the line, its keys, its variables, the
    default cell, the values cell, the meaning)."""
    rows = []
    for line in SETTINGS_MD.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 5, f"not five cells: {line[:80]}"
        keys = re.findall(r"`([^`]+)`", cells[0])
        variables = re.findall(r"`([^`]+)`", cells[1])
        rows.append((line, keys, variables, cells[2], cells[3], cells[4]))
    return rows


def documented_default(cell: str, row: Setting) -> object:
    """The value a default cell stands for, read by the row's own parser."""
    if cell in PROSE_DEFAULTS:
        return PROSE_DEFAULTS[cell]()
    if re.match(r"(none|unset)\b", cell):
        return EMPTY
    given = re.findall(r"`([^`]*)`", cell)
    if cell.startswith("all: "):
        return row.parse(",".join(given))
    assert cell.startswith("`") and given, f"{row.name}: cannot read the default {cell!r}"
    return row.parse(given[0])


def _free(parse: object, name: str) -> object:
    """A value a parser made by a factory (choice, subset) closes over, or None."""
    code = getattr(parse, "__code__", None)
    if code is None or name not in code.co_freevars:
        return None
    return parse.__closure__[code.co_freevars.index(name)].cell_contents  # type: ignore[attr-defined]


def test_every_setting_has_one_row_with_its_variable():
    rows = {row.name: row for row in every_setting()}
    seen: list[str] = []
    wrong = []
    for line, keys, variables, *_ in table_rows():
        for at, key in enumerate(keys):
            seen.append(key)
            row = rows.get(key)
            if row is None:
                wrong.append(f"{key}: documented, but no such setting")
                continue
            variable = variables[at] if len(keys) > 1 else variables[0]
            if variable != row.env:
                wrong.append(f"{key}: documented variable {variable}, code {row.env}")
            if row.alias and row.alias not in line:
                wrong.append(f"{key}: its older variable {row.alias} is not mentioned")
    assert wrong == []
    assert sorted(seen) == sorted(rows), "each setting has exactly one row"


def test_every_documented_default_is_the_codes():
    rows = {row.name: row for row in every_setting()}
    wrong = []
    for _line, keys, _variables, cell, _values, _meaning in table_rows():
        for key in keys:
            row = rows[key]
            try:
                documented = documented_default(cell, row)
            except ValueError as exc:
                wrong.append(f"{key}: the default {cell!r} does not parse: {exc}")
                continue
            if documented is EMPTY:
                if row.default not in ("", (), frozenset()):
                    wrong.append(f"{key}: documented {cell!r}, code {row.default!r}")
            elif documented != row.default:
                wrong.append(f"{key}: documented {cell!r} ({documented!r}), code {row.default!r}")
    assert wrong == []


def test_the_words_a_setting_takes_are_the_documented_ones():
    """For a setting that takes one word (or a list of known words), the values cell lists
    exactly the words its parser takes; errfd's documented values are the ones it takes."""
    rows = {row.name: row for row in every_setting()}
    wrong = []
    for _line, keys, _variables, _default, values, _meaning in table_rows():
        listed = set(re.findall(r"`([^`]+)`", values))
        for key in keys:
            parse = rows[key].parse
            known = _free(parse, "options") or _free(parse, "known")
            if isinstance(known, tuple) and listed != set(known):
                wrong.append(f"{key}: documented {sorted(listed)}, code {sorted(known)}")
    assert wrong == []
    errfd = rows["errfd"]
    (values,) = [row[4] for row in table_rows() if row[1] == ["errfd"]]
    documented = re.findall(r"`([^`]+)`", values)
    for value in documented:
        errfd.parse(value)
    taken = []
    for value in ("off", "on", "none", *map(str, range(11))):
        try:
            errfd.parse(value)
        except ValueError:
            continue
        taken.append(value)
    assert sorted(taken) == sorted(documented)


# The man pages.


def _generated() -> str:
    proc = subprocess.run(
        [sys.executable, str(MAN / "generate.py"), "--stdout"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_settings_man_page_is_what_the_generator_writes():
    """man/qqfilter-settings.5 is generated from the code's rows: after a change to a row,
    run .venv/bin/python man/generate.py and commit the file."""
    assert (MAN / "qqfilter-settings.5").read_text() == _generated()


def test_the_settings_man_page_names_every_setting_and_variable():
    page = (MAN / "qqfilter-settings.5").read_text()
    missing = [
        name
        for row in every_setting()
        for name in (row.name, row.env, row.alias)
        if name and f"\\fB{name}\\fR" not in page
    ]
    assert missing == []


def _man_db() -> bool:
    """Is ``man`` man-db's (which has --warnings), not mandoc's?"""
    proc = subprocess.run(["man", "--help"], capture_output=True, text=True, timeout=30)
    return "--warnings" in proc.stdout + proc.stderr


def _render_warnings(page: str) -> str | None:
    """What man (else groff, else nroff) says on stderr when it renders ``page``; None when
    none of them is installed."""
    path = str(MAN / page)
    if shutil.which("man") and _man_db():
        command = ["man", "--warnings", "-l", path]
    elif shutil.which("groff"):
        command = ["groff", "-man", "-ww", "-z", path]
    elif shutil.which("nroff"):
        command = ["nroff", "-man", "-ww", path]
    else:
        return None
    env = {**os.environ, "MANWIDTH": "80", "PAGER": "cat"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("page", ["qqfilter.8", "qqfilter-settings.5"])
def test_the_man_pages_render_without_warnings(page):
    said = _render_warnings(page)
    if said is None:
        pytest.skip("neither man, groff nor nroff is installed")
    assert said == ""


def subcommands() -> list[str]:
    """The subcommands ``qqfilter --help`` lists (argparse's {a,b,...})."""
    proc = subprocess.run([QQFILTER, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"\{([a-z,-]+)\}", proc.stdout)
    assert found, proc.stdout
    return found.group(1).split(",")


def test_the_program_man_page_names_every_subcommand():
    page = (MAN / "qqfilter.8").read_text()
    missing = []
    for command in subcommands():
        in_synopsis = f"\n.B qqfilter {command}\n" in page
        described = re.search(rf"^\.TP\n\.BI? \"?{re.escape(command)}\b", page, re.M)
        if not (in_synopsis and described):
            missing.append(command)
    assert missing == []


def test_the_program_man_page_names_every_exit_code():
    page = (MAN / "qqfilter.8").read_text()
    codes = sorted(
        {
            value
            for name, value in vars(exitcodes).items()
            if name.isupper() and isinstance(value, int)
        }
    )
    assert 31 in codes and 91 in codes
    missing = [code for code in codes if f"\n.TP\n.B {code}\n" not in page]
    assert missing == []
