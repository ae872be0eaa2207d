"""The ``diffkit`` command: ``list``, ``check``, and ``train`` / ``sample`` / ``demo`` (:mod:`diffkit.cli.run`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence

from diffkit import __version__, registry, testing
from diffkit.cli.run import add_commands
from diffkit.errors import DiffkitError, UnknownNameError

CHECKABLE_KINDS = ("sampler", "schedule", "spacing")
DEBUG_VARIABLE = "DIFFKIT_DEBUG"
DESCRIPTION = (
    "diffkit: diffusion models where every component is a plugin and every equation is checked. "
    "Commands: list and check (registered components and their conformance), train, sample and demo."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and ``python -m diffkit``; returns the exit status.

    A :class:`~diffkit.errors.DiffkitError` ends the command with status 2 and one
    ``diffkit: error: …`` message on stderr, no traceback; ``--debug`` (or ``DIFFKIT_DEBUG=1``)
    shows the traceback instead. Ctrl-C ends it with status 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    debug = "--debug" in argv or os.environ.get(DEBUG_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        args = _parse(parser, argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.run(args)
    except DiffkitError as exc:
        if debug:
            raise
        print(_error_text(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("diffkit: interrupted", file=sys.stderr)
        return 130


def _error_text(exc: BaseException) -> str:
    """``diffkit: error: <first line>``; any further lines (lists of keys, files) indented under it."""
    first, *rest = str(exc).splitlines() or [type(exc).__name__]
    return "\n".join([f"diffkit: error: {first}", *(line if line.startswith(" ") else "  " + line for line in rest)])


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown command gets close matches, and ``train``'s KEY=VALUE overrides
    may stand anywhere on the line (argparse alone takes them only as one block)."""
    commands = _command_names(parser)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in commands:
        raise UnknownNameError("command", first, commands)
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "train":
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides = [*(args.overrides or []), *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:  # the sub-command action is argparse's only record of the names
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def _parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="diffkit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"diffkit {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    kinds = ", ".join(sorted(registry.KINDS))  # the order the unknown-kind error lists them in
    listing = commands.add_parser("list", help="list registered components and their plugins")
    listing.add_argument("kind", nargs="?", help=f"one kind, singular or plural: {kinds}")
    listing.set_defaults(run=_list)
    check = commands.add_parser("check", help="run the conformance checks on samplers, schedules or spacings")
    check.add_argument("names", nargs="+", metavar="NAME", help="registered name, optionally KIND:NAME")
    check.add_argument("--quick", action="store_true", help="fewer steps and samples (faster, less strict)")
    check.add_argument("--order", type=float, help="convergence order to require (default: the entry's order=)")
    check.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a sampler or spacing option for every run, e.g. -o eta=1.0 or -o rho=5 (VALUE is read as JSON, else as text)",
    )
    check.set_defaults(run=_check)

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
        raise DiffkitError(
            f"{name!r} is a {' and a '.join(found)}; write {' or '.join(f'{kind}:{name}' for kind in found)}"
        )
    if not found:
        every = [n for kind in CHECKABLE_KINDS for n in registry.names(kind)]
        raise registry.default_host().unknown_name_error("sampler, schedule or spacing", name, every)
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

    targets = [_resolve(name) for name in args.names]
    options = _parse_options(args.option)
    all_ok, skipped = True, 0
    for kind, name in targets:
        if kind == "sampler":
            report = testing.check_sampler(name, options=options, quick=args.quick, order=args.order)
        elif kind == "spacing":
            report = testing.check_spacing(name, options=options)
        elif kind == "schedule":
            report = testing.check_schedule(name)
        else:
            raise DiffkitError(f"diffkit check runs on {', '.join(CHECKABLE_KINDS)}; {kind}:{name} has no checks")
        print(report.format())
        all_ok &= report.ok
        skipped += sum(1 for result in report.results if result.skipped)
    skips = f" ({skipped} skipped: not applicable, see SKIP lines)" if skipped else ""
    print(("no check failed" if all_ok else "some checks FAILED") + skips)
    return 0 if all_ok else 1
