"""The check units: the registry and the settings assemble themselves from them."""

import subprocess
import sys
import textwrap

from conftest import ROOT

from qqfilter.checks import units
from qqfilter.settings import CORE, every_setting, load


def test_the_checks_run_in_their_declared_order():
    assert [unit.name for unit in units()] == [
        "size",
        "recipients",
        "dnsbl",
        "helo",
        "rdns",
        "sender",
        "mime",
        "spf",
        "dkim",
        "dmarc",
        "clamd",
        "qhpsi",
        "spamd",
        "rspamd",
        "dkimsign",
    ]
    orders = [unit.order for unit in units()]
    assert orders == sorted(orders)


def test_every_setting_row_has_one_owner_name_and_variable():
    rows = every_setting()
    names = [row.name for row in rows]
    assert len(names) == len(set(names))
    variables = [row.env for row in rows] + [row.alias for row in rows if row.alias]
    assert len(variables) == len(set(variables))
    assert rows[: len(CORE)] == CORE
    owned = {row.name for unit in units() for row in unit.settings}
    assert owned | {row.name for row in CORE} == set(names)


def test_a_row_shared_by_a_family_is_read_once():
    """clamd and qhpsi both list QQF_SCANTIMEOUT: one row, one value."""
    settings, errors = load({"QQF_SCANTIMEOUT": "7", "QQF_CONFIG": "/dev/null"})
    assert errors == []
    from qqfilter.checks.virus import SCANTIMEOUT

    assert settings[SCANTIMEOUT] == 7.0
    assert [row.name for row in every_setting()].count("scantimeout") == 1


def test_every_preload_of_every_unit_imports():
    """What the resident server preloads exists (libmagic is the one optional library)."""
    for unit in units():
        for name in unit.preload:
            if name == "magic":
                continue
            __import__(name)


def test_an_older_setting_name_is_still_read_from_the_file_and_the_environment(tmp_path):
    from qqfilter.checks.mime import MIMESKIP

    config = tmp_path / "old.toml"
    config.write_text('attachskip = ["relayclient"]\n')
    settings, errors = load({"QQF_CONFIG": str(config)})
    assert errors == []
    assert settings[MIMESKIP] == frozenset({"relayclient"})
    settings, errors = load({"QQF_CONFIG": "/dev/null", "QQF_ATTACHSKIP": "local"})
    assert (settings[MIMESKIP], settings.sources["mimeskip"]) == (
        frozenset({"local"}),
        "QQF_ATTACHSKIP",
    )
    settings, errors = load({"QQF_CONFIG": "/dev/null", "QQF_MIMESKIP": "relayclient"})
    assert settings[MIMESKIP] == frozenset({"relayclient"})


UNIT = """
from qqfilter.checks import Finding
from qqfilter.settings import Setting, text
NAME = "{name}"
ORDER = {order}
ROW = Setting("{name}x", "QQF_{upper}X", "", text, "a row")
SETTINGS = {settings}
PRELOAD = ()
def check(message, settings):
    return None
"""


def test_units_are_found_in_modules_packages_and_families(tmp_path):
    """Discovery, on a scratch package laid out like qqfilter/checks: a module, a package with
    a helper, a family whose __init__ holds a shared row, and a module that is left alone."""
    package = tmp_path / "scratch"
    (package / "family" / "second").mkdir(parents=True)
    (package / "package").mkdir()
    checks = (ROOT / "qqfilter" / "checks" / "__init__.py").read_text()
    (package / "__init__.py").write_text(checks)
    (package / "module.py").write_text(
        UNIT.format(name="module", upper="MODULE", order=30, settings="(ROW,)")
    )
    (package / "package" / "__init__.py").write_text(
        UNIT.format(name="package", upper="PACKAGE", order=10, settings="(ROW,)")
    )
    (package / "package" / "helper.py").write_text("raise SystemExit('a helper was imported')\n")
    (package / "_private.py").write_text("raise SystemExit('a private module was imported')\n")
    (package / "family" / "__init__.py").write_text(
        "from qqfilter.settings import Setting, text\n"
        'SHARED = Setting("shared", "QQF_SHARED", "", text, "shared")\n'
    )
    shares = "(ROW, __import__('scratch.family', fromlist=['SHARED']).SHARED)"
    (package / "family" / "first.py").write_text(
        UNIT.format(name="first", upper="FIRST", order=20, settings=shares)
    )
    (package / "family" / "second" / "__init__.py").write_text(
        UNIT.format(name="second", upper="SECOND", order=20, settings=shares)
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import scratch
        found = scratch.units()
        print([unit.name for unit in found])
        print(sorted({{row.name for unit in found for row in unit.settings}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    names, rows = out.stdout.splitlines()
    assert names == "['package', 'first', 'second', 'module']"
    assert rows == "['firstx', 'modulex', 'packagex', 'secondx', 'shared']"
