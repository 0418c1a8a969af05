"""Go OpenELB's command lines, accepted verbatim (`openelb-behaviour.md` §7.2, §7.4).

A user who swaps the images in OpenELB's own manifest keeps its container args: pflag booleans
(`--leader-elect` bare, `--flag=true`, `--flag=1`), the klog flags (`--v=2`, `--logtostderr`,
their `_` spellings), and flags whose job does not exist here (keepalived's, GoBGP's API port):
those are accepted and each says in one log line why it has no effect. Unknown flags still fail
with their name (argparse's "unrecognized arguments").
"""

from __future__ import annotations

import argparse
import logging

TRUE = ("1", "t", "T", "true", "TRUE", "True")
FALSE = ("0", "f", "F", "false", "FALSE", "False")


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, as pflag reads `--flag=<value>`."""
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true or false)")


def add_bool(parser: argparse.ArgumentParser, name: str, default: bool, help: str | None = None) -> None:
    """A pflag boolean: `--name` alone is true; `--name=false`, `--name false` as pflag and we allow."""
    parser.add_argument(name, nargs="?", const=True, default=default, type=go_bool, metavar="true|false", help=help)


KLOG_BOOLS = ("logtostderr", "alsologtostderr", "add-dir-header", "skip-headers", "skip-log-headers", "one-output")
KLOG_VALUES = ("log-dir", "log-file", "log-file-max-size", "stderrthreshold", "vmodule", "log-backtrace-at")


def add_klog(parser: argparse.ArgumentParser) -> None:
    """klog's flags (Go OpenELB registers them on both daemons). `-v`/`--v` sets our log level
    (4 and above: debug); the others are accepted: we always log to stderr."""
    group = parser.add_argument_group("klog flags (Go OpenELB's; accepted)")
    group.add_argument("-v", "--v", type=int, default=0, dest="klog_v", help="log verbosity: 4 and above is debug")
    for name in KLOG_BOOLS:
        spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        group.add_argument(*spellings, nargs="?", const=True, type=go_bool, dest=f"klog_{name}", help=argparse.SUPPRESS)
    for name in KLOG_VALUES:
        spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        group.add_argument(*spellings, dest=f"klog_{name}", help=argparse.SUPPRESS)


def log_level(args: argparse.Namespace) -> int:
    return logging.DEBUG if getattr(args, "klog_v", 0) >= 4 else logging.INFO


def klog_notes(args: argparse.Namespace) -> list[str]:
    notes = []
    for name in (*KLOG_BOOLS, *KLOG_VALUES):
        value = getattr(args, f"klog_{name}", None)
        if value is not None and not (name == "logtostderr" and value is True):
            notes.append(f"--{name}={value}: accepted for Go OpenELB's command line; we always log to stderr")
    return notes
