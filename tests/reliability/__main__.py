"""``python -m tests.reliability``: run the reliability cases and print the tally as Markdown.

    .venv/bin/python -m tests.reliability                 # every case, the tally and the failures
    .venv/bin/python -m tests.reliability -k sample_api   # the cases whose name contains a text
    .venv/bin/python -m tests.reliability --category "run folders" --full
    .venv/bin/python -m tests.reliability --write docs/reliability.md   # regenerate the document
    .venv/bin/python -m tests.reliability --list          # the cases, without running them

Exit status 0 when every case run is a named error or a correct success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.reliability.cases import CASES, CATEGORIES
from tests.reliability.harness import GOOD, REPO, Runner, case_list, failures, headline, tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", action="append", default=[], help="only cases whose name contains this (repeatable)")
    parser.add_argument("--category", action="append", default=[], help="only this category (repeatable)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="worker processes in parallel (default 1)")
    parser.add_argument("--full", action="store_true", help="also list every case with its outcome")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--json", help="also write the raw results to this JSON file")
    parser.add_argument("--write", metavar="PATH", help="write the whole document (docs/reliability.md) to PATH")
    parser.add_argument("--session", help="the working folder (default: a fresh temporary folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    cases = [
        c for c in CASES
        if (not args.pattern or any(p in c.name for p in args.pattern)) and (not args.category or c.category in args.category)
    ]
    if args.list:
        for c in cases:
            print(f"{c.category:28}  {c.name:45}  {c.expect if isinstance(c.expect, str) else 'machine'}  {c.what}")
        print(f"{len(cases)} cases")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="diffkit-reliability-") as scratch:
        session = Path(args.session) if args.session else Path(scratch)
        start = time.perf_counter()
        runner = Runner(session, jobs=args.jobs)
        done = [0]

        def progress(result: dict) -> None:
            done[0] += 1
            if not args.quiet:
                mark = "  " if result["outcome"] in GOOD else "!!"
                print(
                    f"{mark} [{done[0]:3}/{len(cases)}] {result['name']:45} {result['outcome']:15} {result.get('seconds', 0):6.2f}s",
                    file=sys.stderr, flush=True,
                )

        try:
            results = runner.run_all(cases, progress=progress)
        finally:
            runner.close()
        seconds = time.perf_counter() - start
        permissions = runner.permissions_enforced

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    text = document(results, seconds=seconds, permissions=permissions, full=args.full or bool(args.write))
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"wrote {args.write}", file=sys.stderr)
    else:
        print(report(results, seconds=seconds, permissions=permissions, full=args.full))
    return 0 if all(r["outcome"] in GOOD for r in results) else 1


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
        return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(results: list[dict], *, seconds: float, permissions: bool | None, full: bool) -> str:
    """The tally, the headline and the failing cases (what the command prints)."""
    today = datetime.date.today().isoformat()
    parts = [
        f"Measured {today} at commit {_commit()}, {len(results)} cases in {seconds:.0f} s.",
        "",
        tally(results, CATEGORIES),
        "",
        f"**{headline(results)}**",
        "",
    ]
    if permissions is False:
        parts += ["(This process ignores permission bits, so the read-only-folder cases cannot fail as they should.)", ""]
    parts += ["### Cases that are not yet a named error or a correct success", "", failures(results, CATEGORIES), ""]
    if full:
        parts += ["### Every case", "", case_list(results, CATEGORIES)]
    return "\n".join(parts)


INTRO = """\
# Reliability tally

How diffkit answers bad inputs and faults: every careless or hostile input we could think of —
a wrong command-line value, a damaged or foreign run folder, a hostile `pipeline.json`, a
non-finite tensor, a second process on the same run folder — run as a case and classified by
what diffkit did. The goal (issue 11) is that every bad input is a **named error** before any
work starts, and that nothing ever hangs or touches a file it did not write: the tally's target
is *X / 0 / 0 / 0 / 0*.

## The outcomes

| outcome | meaning |
|---|---|
| named error | an error was expected and diffkit raised a `DiffkitError` subclass with a message naming what the case needs (for the `diffkit` command: exit status 2, a last line `diffkit: error: …` — argparse's `diffkit train: error: …` counts — followed only by indented continuation lines, and no traceback) |
| correct success | the input is valid (a control case, or a fault diffkit must recover from, such as a damaged newest checkpoint) and a `verify` function accepted the result: the image exists and is not flat, the run is complete at the right step with an intact checkpoint and finite weights, … |
| raw traceback | any other exception (`TypeError`, `RuntimeError`, …), a traceback on stderr, an exit status other than 0 or 2, a crashed worker process, or an error message that does not name what it must (or repeats unsafe advice) |
| silently wrong | an error was expected but the call succeeded; a valid input was refused; `verify` failed; or the error came only after work was spent (a `checkpoints/` folder or a pipeline appeared), or after something it must never do (a pickle payload ran, a NaN pipeline was saved, an image was written) |
| hang | the case ran past its time bound (30–110 s; the worker process is killed with its children) |
| data lost | a file the case protects changed (bytes or mtime) or vanished: by default every file present before a command that must fail (a refused command changes nothing); for successes, the user's files and earlier runs' records the case names |

The tally's five required columns are *named error / raw traceback / silently wrong / hang /
data lost*; correct successes are counted beside them, and the headline counts them with the
named errors.

## How it is measured

`tests/reliability/` holds the harness (`harness.py`), the case table (`cases.py`, one
`case(...)` call per case) and `test_reliability.py`, which runs every case under pytest (each
must be a named error or a correct success; it is part of the suite, marked `slow`). Each case
runs in a worker process that imports torch once and runs the cases one by one in-process
(`diffkit.cli.commands.main(argv)`, or a Python API call), each in a fresh folder that is its working
directory, with a copy of one shared tiny trained run (`diffkit train --recipe digits --steps 4`,
checkpoints at steps 2 and 4). The worker runs under a 4 GiB address-space limit, so an absurd
allocation fails inside it instead of waking the OOM killer; as root it drops the capabilities
that bypass permission bits, so read-only folders are read-only to it. A case that overruns its
bound kills the worker (a hang), a crashed worker is a raw traceback; the next case gets a fresh
worker. Cases with several processes (a lock held by a real `diffkit train`, two trainings
started together, the real `python -m diffkit` entry point) start real child processes.

A case names the words its error must contain (the key, value, file or process at fault), so
an error raised for another reason does not count as a named error; some also name words the
message must not contain (torch's `weights_only=False` advice, an outside folder's entries).
Adding a case is one call in `cases.py`, e.g.

    case("sample.n_0", SAMPLE, "diffkit sample --n 0", sample("--n", "0"), setup=run(), names=("--n",))
    case("run.resume_extend", RUNS, "--resume --steps 8 after a 4-step run", resume(steps=8), setup=run(),
         expect="ok", verify=finished_at(8))

Reproduce the tally (about one and a half minutes on two shared cores):

    .venv/bin/python -m tests.reliability            # prints the tally and the failing cases
    .venv/bin/python -m tests.reliability --write docs/reliability.md   # regenerates this file
    .venv/bin/python -m tests.reliability -k run.resume --full          # a subset, every case listed

## Before issue 11

The same 481 cases run against the last commit before the work on issue 11 (e63b3bb), measured
2026-12-04 with `git worktree add /tmp/old e63b3bb && cp -r tests/reliability /tmp/old/tests/ &&
cd /tmp/old && python -m tests.reliability` (the installed diffkit shadowed by the old tree):

| | named error or correct success | raw traceback | silently wrong | hang | data lost | harness error |
|---|---:|---:|---:|---:|---:|---:|
| e63b3bb (before) | 279 | 112 | 67 | 1 | 9 | 13 |
| now (below) | 481 | 0 | 0 | 0 | 0 | 0 |

The 13 harness errors are cases whose set-up needs records the old code did not write (run
identities, checkpoint manifests); every one of them is also a behaviour the old code lacked.

## The categories

| category | what it tries |
|---|---|
| train arguments | every `train.*` key with wrong types and out-of-range values, `sample.*`, `pipeline.*`, `backbones.*` and `data.*` values, unknown keys and malformed overrides, unknown recipes, backbones and samplers, `--steps`; all must be refused before the first step (no `checkpoints/` may appear) |
| run folders | `--out` naming a file, a read-only folder, `/proc`, a path under a file, a NUL byte, symlinks; a second run into a run folder; folders holding the user's files (also with `--overwrite`); `--overwrite`, `--resume` with another recipe, `--resume --steps N` extending or shortening a run, resuming a finished run; a run folder locked by another process |
| checkpoints and run records | `recipe.json`, `run.json` and the newest checkpoint's `meta.json` truncated, `[]`, `null`, not UTF-8, a FIFO, edited; truncated, missing or random weights and state; a pickle payload in `state.pt`; another run's checkpoints; NaN weights; every checkpoint damaged |
| sample command | `diffkit sample` with a missing/odd `--from`, bad `--n`, `--seed`, `--steps`, `--sampler`, `--class`, `--prompt`, `--guidance`, `--precision`, and outputs that cannot be written |
| pipeline folders | `pipeline.json`, a component's `diffkit.json` and its `model.safetensors` damaged or hostile: wrong JSON shapes, wrong types, unknown names, component paths leaving the folder, NaN/inf/int/bool weights, truncated files, forged safetensors headers |
| python api | `diffkit.build`, `diffkit.Pipeline(...)`, `Pipeline.sample`, `diffkit.sample`, `load_pretrained`, `Pipeline.save` with bad arguments |
| non-finite values | training whose loss turns NaN, data holding NaN or inf, a divergent learning rate, a NaN checkpoint resumed, sampler plugins returning NaN or the wrong shape, NaN weights sampled |
| cli | unknown subcommands and kinds, `diffkit check` and `diffkit demo` with bad values, `--version`, `--help`, and the real `python -m diffkit` process (exit status 2, no traceback) |
"""


def document(results: list[dict], *, seconds: float, permissions: bool | None, full: bool) -> str:
    """The whole of docs/reliability.md."""
    return INTRO + "\n## The tally\n\n" + report(results, seconds=seconds, permissions=permissions, full=full).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
