"""``qqfilter config``: the effective settings, as a TOML file a person can read and save.

Like every tool module (qqfilter.tools), it holds its sub-parser, handler and writer together.
It lists ``every_setting()`` in order, so a setting a check unit adds shows up here without a
change to this module.
"""

import argparse
import os
import sys

from qqfilter.settings import every_setting, load


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``config`` to the subcommands ``sub``."""
    parser = sub.add_parser("config", help="print the effective settings and where they come from")
    parser.set_defaults(run=_config)


def _config(options: argparse.Namespace) -> int:
    """Print the effective settings as a TOML file (it can be saved as one), each with its
    meaning, its variable and where its value came from; invalid ones go to stderr."""
    settings, errors = load(dict(os.environ))
    for setting in every_setting():
        value = _toml(settings[setting])
        source = settings.sources[setting.name]
        print(f"# {setting.doc}")
        env = f"{setting.env} or {setting.alias}" if setting.alias else setting.env
        print(f"{setting.name} = {value}  # {env}, from {source}\n")
    for error in errors:
        print(f"qqfilter: {error}", file=sys.stderr)
    return 1 if errors else 0


def _toml(value: object) -> str:
    if value is None:  # a limit that is off (QQF_SPAMREJECT): the word its parser reads
        return '"off"'
    if isinstance(value, frozenset | tuple):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(_toml(v) for v in items) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    spelled = getattr(value, "spelled", None)  # a parsed entry that keeps how it was written
    if isinstance(spelled, str):  # (a DNS list zone): written as it was given
        return _toml(spelled)
    return str(value)
