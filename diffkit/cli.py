"""The ``diffkit`` command: ``list``, ``check``, and ``train`` / ``sample`` / ``demo`` (:mod:`diffkit.cli_run`)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from diffkit import registry
from diffkit.errors import DiffkitError

CHECKABLE_KINDS = ("sampler", "schedule")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m diffkit``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except DiffkitError as exc:
        print(f"diffkit: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffkit", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    listing = commands.add_parser("list", help="list registered components and their plugins")
    listing.add_argument("kind", nargs="?", help=f"one of {', '.join(k + 's' for k in registry.KINDS)}")
    listing.set_defaults(run=_list)
    check = commands.add_parser("check", help="run the conformance checks on samplers or schedules")
    check.add_argument("names", nargs="+", metavar="NAME", help="registered name, optionally KIND:NAME")
    check.add_argument("--quick", action="store_true", help="fewer steps and samples (faster, less strict)")
    check.add_argument("--order", type=float, help="convergence order to require (default: the entry's order=)")
    check.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a sampler option for every run, e.g. -o eta=1.0 (VALUE is read as JSON, else as text)",
    )
    check.set_defaults(run=_check)
    from diffkit.cli_run import add_commands

    add_commands(commands)
    return parser


def _list(args: argparse.Namespace) -> int:
    kinds = [registry.normalize_kind(args.kind)] if args.kind else list(registry.KINDS)
    with warnings.catch_warnings():  # problems are printed below, not as warnings
        warnings.simplefilter("ignore", registry.PluginWarning)
        host = registry.default_host().load()
    for kind in kinds:
        entries = sorted(host.entries[kind].values(), key=lambda e: e.name)
        print(f"{kind}s ({len(entries)})")
        width = max((len(e.name) for e in entries), default=0)
        for entry in entries:
            print(f"  {entry.name:<{width}}  {entry.summary}  [{entry.origin.describe()}]")
        for name, claims in sorted(host.conflicts[kind].items()):
            who = " and ".join(c.origin.describe() for c in claims)
            print(f"  {name:<{width}}  CONFLICT: claimed by {who}; neither is used")
    if host.problems:
        print("broken plugins")
        for problem in host.problems:
            print(f"  {problem.origin.describe()}: {problem.stage} failed: {problem.message}")
    if host.blocked:
        print("blocked plugins (DIFFKIT_DISABLE_PLUGINS)")
        for plugin in host.blocked:
            print(f"  {plugin}")
    return 0


def _resolve(name: str) -> tuple[str, str]:
    """``KIND:NAME`` or a bare NAME looked up in the checkable registries."""
    if ":" in name:
        kind, _, bare = name.partition(":")
        kind = registry.normalize_kind(kind)
        registry.get_entry(kind, bare)
        return kind, bare
    found = [kind for kind in CHECKABLE_KINDS if name in registry.names(kind)]
    if len(found) > 1:
        raise DiffkitError(f"{name!r} is both a sampler and a schedule; write sampler:{name} or schedule:{name}")
    if not found:
        every = [n for kind in CHECKABLE_KINDS for n in registry.names(kind)]
        raise registry.default_host().unknown_name_error("sampler or schedule", name, every)
    return found[0], name


def _parse_options(pairs: Sequence[str]) -> dict[str, object]:
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise DiffkitError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _check(args: argparse.Namespace) -> int:
    from diffkit import testing  # imported here: only ``check`` needs the kit

    targets = [_resolve(name) for name in args.names]
    options = _parse_options(args.option)
    all_ok = True
    for kind, name in targets:
        if kind == "sampler":
            report = testing.check_sampler(name, options=options, quick=args.quick, order=args.order)
        else:
            report = testing.check_schedule(name)
        print(report.format())
        all_ok &= report.ok
    print("all checks passed" if all_ok else "some checks FAILED")
    return 0 if all_ok else 1
