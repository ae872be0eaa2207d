"""Running reliability cases: the case record, the worker process, outcome classification, the report.

The parent (``python -m tests.reliability`` or the pytest module) never runs a case itself. It
starts a worker (``python -m tests.reliability._worker SESSION FD``) that imports torch
and diffkit once and runs the cases it is sent one by one, in-process, each in a fresh folder
that is also its working directory. The parent waits for each answer at most the case's time
bound; a worker that overruns is killed with its whole process group (the case is a *hang*), a
worker that dies is a crash (*raw traceback*); either way the next case gets a fresh worker.

The worker runs with a 4 GiB address-space limit, so a request for an absurd allocation fails
inside the process instead of waking the OOM killer; when it runs as root it first drops
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (and re-executes itself), so that read-only folders are
read-only to it as to any user.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

OUTCOMES = ("named error", "ok", "raw traceback", "silently wrong", "hang", "data lost")
GOOD = frozenset({"named error", "ok"})
COLUMNS = {  # outcome → column heading of the tally
    "named error": "named error", "raw traceback": "raw traceback", "silently wrong": "silently wrong",
    "hang": "hang", "data lost": "data lost", "ok": "correct success",
}
EXPECTS = ("error", "ok", "either")

ALL = ("**",)
"""``protect=ALL``: every file present after set-up must be byte-identical (and keep its mtime) afterwards."""

TINY_BASE = (
    "train.batch_size=8", "train.save_every=2", "train.sample_every=0", "sample.n=4", "sample.steps=2",
)
"""The overrides of the shared tiny run (4 steps, checkpoints at steps 2 and 4)."""

ADDRESS_SPACE_LIMIT = 4 << 30
IGNORED_NAMES = frozenset({"run.lock"})  # the lock file's holder record is rewritten by every attempt


# -- the case record ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input or fault, and what diffkit must do with it.

    Args:
        name: unique, short, ``[a-z0-9_.-]``.
        category: one of :data:`CATEGORIES` (the rows of the tally).
        what: the bad input, in a few words (shown in the report).
        action: a ``diffkit`` argument list (run in-process as ``diffkit.cli.commands.main(argv)``), or a
            function ``action(ctx)``; a function may return a :class:`CliResult` (then it is
            judged like a command) or any value (handed to ``verify``).
        expect: ``"error"`` (a named DiffkitError), ``"ok"`` (success that ``verify`` accepts),
            ``"either"`` (both are correct), or a function of no arguments, called in the worker,
            returning one of those (for cases that depend on the machine, e.g. CUDA).
        setup: ``setup(ctx)`` prepares the case's folder (copies the shared run, damages it).
        verify: ``verify(ctx, value)`` → None when the success is correct, else what is wrong.
        names: strings the error message must contain (case-insensitive).
        protect: glob patterns (relative to the case folder; ``*`` crosses ``/``) of files that
            must come out byte-identical with the same mtime. Default: :data:`ALL` when an
            error is expected (a refused command changes nothing), none otherwise.
        forbid: strings the error message must not contain (e.g. unsafe advice, an outside
            folder's entries).
        post: ``post(ctx, value)`` → None, or what is wrong whatever the outcome (a payload that
            ran, a NaN pipeline saved before the error): the case is then *silently wrong*.
        allow_work: checkpoints that appear before the error are legitimate (another process
            of the case trains too; a run that diverges after its first checkpoints).
        timeout: seconds before the case counts as a hang.
    """

    name: str
    category: str
    what: str
    action: Sequence[str] | Callable[[Ctx], Any]
    expect: str | Callable[[], str] = "error"
    setup: Callable[[Ctx], None] | None = None
    verify: Callable[[Ctx, Any], str | None] | None = None
    names: tuple[str, ...] = ()
    protect: tuple[str, ...] | None = None
    forbid: tuple[str, ...] = ()
    post: Callable[[Ctx, Any], str | None] | None = None
    allow_work: bool = False
    timeout: float = 60.0


@dataclass
class CliResult:
    """What a ``diffkit`` command did: exit status, output, and a traceback if one escaped."""

    code: int | None
    stdout: str = ""
    stderr: str = ""
    escaped: str | None = None  # the formatted traceback of an exception that escaped main()


@dataclass
class Ctx:
    """What a case's set-up, action and verify work with.

    ``tmp`` is the case's own folder and the working directory; ``base`` the shared tiny run
    folder (copy it, never change it).
    """

    tmp: Path
    base: Path
    names: list[str] = field(default_factory=list)
    """Strings the error message must name, known only at run time (e.g. a lock holder's pid)."""
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    def run_copy(self, name: str = "R") -> Path:
        """A copy of the shared tiny run folder (4 steps, checkpoints 2 and 4, pipeline)."""
        target = self.tmp / name
        shutil.copytree(self.base, target, symlinks=True)
        return target

    def pipe_copy(self, name: str = "P") -> Path:
        """A copy of the shared run's ``pipeline/`` folder."""
        target = self.tmp / name
        shutil.copytree(self.base / "pipeline", target, symlinks=True)
        return target

    def cli(self, argv: Sequence[str]) -> CliResult:
        return run_cli(argv)

    def subprocess_cli(self, argv: Sequence[str], *, timeout: float = 50.0, env: dict[str, str] | None = None) -> CliResult:
        """``python -m diffkit ARGV`` in a child process (the real entry point, real exit status)."""
        return run_subprocess([sys.executable, "-m", "diffkit", *argv], timeout=timeout, env=env, cwd=self.tmp)

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def cleanup(self) -> None:
        while self._cleanups:
            with contextlib.suppress(Exception):
                self._cleanups.pop()()


def run_cli(argv: Sequence[str]) -> CliResult:
    """``diffkit.cli.commands.main(argv)`` in this process, its output captured; argparse exits are caught."""
    import warnings

    from diffkit.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    code: int | None = None
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if not isinstance(exit_.code, (int, type(None))):
                err.write(f"{exit_.code}\n")
        except Exception:  # noqa: BLE001 - any escaping exception is the finding
            escaped = traceback.format_exc()
    return CliResult(code, out.getvalue(), err.getvalue(), escaped)


def run_subprocess(
    command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> CliResult:
    """A child process's exit status and output; past ``timeout`` it is killed and reported as such."""
    environ = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, env=environ, cwd=cwd,
            stdin=subprocess.DEVNULL, errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        raise CaseHang(f"the child process {' '.join(command[:6])}… ran past {timeout:.0f} s") from exc
    return CliResult(done.returncode, done.stdout, done.stderr)


class CaseHang(Exception):
    """Raised by a case's own wait (a child process) that ran past its bound."""


class SetupError(Exception):
    """The case's set-up failed: a bug of the case, not a finding."""


# -- snapshots: what a case may not change ---------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not following symlinks; FIFOs and devices never opened)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            try:
                info = os.lstat(path)
            except OSError:
                continue
            if name in IGNORED_NAMES:
                continue
            if stat.S_ISLNK(info.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[rel] = ("dir",)
            elif stat.S_ISREG(info.st_mode):
                entries[rel] = ("file", info.st_size, info.st_mtime_ns, _digest(path))
            else:
                entries[rel] = ("special", stat.S_IFMT(info.st_mode), info.st_mtime_ns)
        dirs[:] = [d for d in dirs if not os.path.islink(Path(folder) / d)]
    return entries


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:  # unreadable to the worker (permissions): compare by size and mtime only
        return f"unreadable:{exc.errno}"
    return digest.hexdigest()


def protected_changes(
    before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]], patterns: Iterable[str]
) -> list[str]:
    """What happened to each protected, non-folder entry of ``before`` that is not as it was."""
    patterns = list(patterns)
    problems = []
    for rel, was in sorted(before.items()):
        if was[0] == "dir" or not any(fnmatch.fnmatchcase(rel, p) or p == "**" for p in patterns):
            continue
        now = after.get(rel)
        if now is None:
            problems.append(f"{rel} was removed")
        elif now[0] != was[0]:
            problems.append(f"{rel} was replaced ({was[0]} → {now[0]})")
        elif now != was:
            problems.append(f"{rel} was changed" + (" (same bytes, new mtime)" if was[:2] == now[:2] and was[-1] == now[-1] else ""))
    return problems


def new_work(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    """Checkpoint folders and pipelines that appeared: work spent by a command that then failed."""
    made = []
    for rel in sorted(set(after) - set(before)):
        parts = rel.split("/")
        if parts[-1] == "checkpoints" or (len(parts) > 1 and parts[-2] == "checkpoints" and parts[-1].startswith("step-")):
            made.append(rel)
        elif parts[-1] == "pipeline.json":
            made.append(rel)
    return made


# -- classification -------------------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^diffkit(?: [a-z][a-z-]*)?: error: \S")


def cli_error_message(result: CliResult) -> tuple[str | None, str | None]:
    """(message, problem) of a command that failed: the ``diffkit: error:`` line, or what is wrong.

    A named error: exit status 2, no traceback, and a line ``diffkit: error: …`` (argparse's
    ``diffkit train: error: …`` counts too) followed by nothing but indented continuation lines.
    """
    if result.escaped is not None:
        return None, "escaped diffkit.cli.commands.main: " + summarize_traceback(result.escaped)
    if "Traceback (most recent call last)" in result.stderr:
        return None, f"exit {result.code} with a traceback on stderr: " + summarize_traceback(result.stderr)
    if result.code != 2:
        return None, f"exit status {result.code} (expected 0 or 2); stderr: {_tail(result.stderr, 800)!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for index in range(len(lines) - 1, -1, -1):
        if _ERROR_LINE.match(lines[index]):
            if all(line[:1].isspace() for line in lines[index + 1:]):
                return "\n".join(lines[index:]), None
            return None, (
                "exit 2, but the error is not one 'diffkit: error: …' line (lines after it are not indented "
                f"continuations): {_tail(chr(10).join(lines[index:]), 800)!r}"
            )
    return None, f"exit 2 without a 'diffkit: error: …' line; stderr: {_tail(result.stderr, 800)!r}"


def classify(
    case: Case,
    expect: str,
    observed: tuple[str, Any],
    ctx: Ctx,
    before: dict[str, tuple[Any, ...]],
    after: dict[str, tuple[Any, ...]],
) -> tuple[str, str]:
    """(outcome, detail) of one case; see the package docstring for the outcomes."""
    patterns = case.protect if case.protect is not None else (ALL if expect == "error" else ())
    lost = protected_changes(before, after, patterns)
    kind, value = observed
    message = problem = None
    succeeded = False
    if kind == "cli":
        if value.code == 0 and value.escaped is None and "Traceback (most recent call last)" not in value.stderr:
            succeeded = True
        else:
            message, problem = cli_error_message(value)
    elif kind == "error":
        message = f"{type(value).__name__}: {value}"
        if not str(value).strip():
            problem = f"{type(value).__name__} with an empty message"
    elif kind == "raw":
        problem = value
    else:
        succeeded = True
    if lost:
        what = "succeeded" if succeeded else f"failed ({_first_line(message or problem or '')})"
        return "data lost", f"{'; '.join(lost)} — the command {what}"
    if case.post is not None:
        try:
            wrong = case.post(ctx, value)
        except Exception as exc:  # noqa: BLE001
            wrong = f"the post-condition could not be checked: {type(exc).__name__}: {exc}"
        if wrong:
            return "silently wrong", wrong
    if problem is not None:
        return "raw traceback", problem
    if message is not None:
        if expect == "ok":
            return "silently wrong", f"a valid input was refused: {_tail(message, 600)}"
        missing = [name for name in [*case.names, *ctx.names] if name.lower() not in message.lower()]
        if missing:
            return "raw traceback", f"the error does not name {', '.join(map(repr, missing))}: {_tail(message, 600)}"
        leaked = [text for text in case.forbid if text.lower() in message.lower()]
        if leaked:
            return "raw traceback", f"the error message contains {', '.join(map(repr, leaked))}: {_tail(message, 600)}"
        wasted = [] if case.allow_work else new_work(before, after)
        if wasted:
            return "silently wrong", f"failed only after doing work ({', '.join(wasted[:4])}): {_tail(message, 400)}"
        return "named error", _tail(message, 600)
    # it succeeded
    if expect == "error":
        if kind == "cli":
            return "silently wrong", f"succeeded (exit 0); output: {_tail((value.stdout + value.stderr).strip(), 400)!r}"
        return "silently wrong", f"succeeded (no error): returned {describe_value(value)}"
    if case.verify is not None:
        try:
            wrong = case.verify(ctx, value)
        except Exception as exc:  # noqa: BLE001 - a verify that cannot run means the result is not there
            wrong = f"verify raised {type(exc).__name__}: {exc}"
        if wrong:
            return "silently wrong", f"succeeded but {wrong}"
    return "ok", "as expected"


def describe_value(value: Any) -> str:
    """A short description of what an API call returned (tensors by shape, dtype and finiteness)."""
    try:
        import torch

        if isinstance(value, torch.Tensor):
            text = f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
            if value.is_floating_point() and value.device.type != "meta":
                bad = int((~torch.isfinite(value)).sum())
                text += f", {bad} non-finite value(s)" if bad else ", all finite"
            return text
        if isinstance(value, torch.nn.Module):
            return f"a {type(value).__name__} module"
    except ImportError:
        pass
    return _tail(repr(value), 200)


def summarize_traceback(text: str) -> str:
    """``Type: message (innermost diffkit frame)`` of a formatted traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text)
    where = ""
    for path, line, function in reversed(frames):
        if "/diffkit/" in path.replace("\\", "/") and "/tests/" not in path.replace("\\", "/"):
            where = f" (at {path[path.replace(chr(92), '/').rfind('/diffkit/') + 1:]}:{line} in {function})"
            break
    last = next((line.strip() for line in reversed(lines) if not line.startswith((" ", "\t", "^", "~"))), "")
    return f"{last[:500]}{where}"


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


# -- running one case (in the worker) -------------------------------------------------------------


def run_case(case: Case, session: Path) -> dict[str, Any]:
    """Set up, act, verify and classify ``case`` in a fresh folder under ``session``."""
    from diffkit import registry
    from diffkit.errors import DiffkitError

    tmp = session / "cases" / case.name
    if tmp.exists():
        _remove(tmp)
    tmp.mkdir(parents=True)
    ctx = Ctx(tmp=tmp, base=session / "base" / "R")
    start = time.perf_counter()
    expect = case.expect() if callable(case.expect) else case.expect
    result: dict[str, Any] = {"name": case.name, "category": case.category, "expect": expect}
    os.chdir(tmp)
    try:
        registry.reset()
        try:
            if case.setup is not None:
                case.setup(ctx)
        except Exception as exc:  # noqa: BLE001
            raise SetupError(f"set-up failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from exc
        before = snapshot(tmp)
        observed: tuple[str, Any]
        try:
            if callable(case.action):
                value = case.action(ctx)
                observed = ("cli", value) if isinstance(value, CliResult) else ("value", value)
            else:
                observed = ("cli", run_cli(case.action))
        except CaseHang as exc:
            result.update(outcome="hang", detail=str(exc))
            return result
        except DiffkitError as exc:
            observed = ("error", exc)
        except SetupError:
            raise
        except Exception:  # noqa: BLE001 - any other exception is the finding
            observed = ("raw", "raised " + summarize_traceback(traceback.format_exc()))
        after = snapshot(tmp)
        outcome, detail = classify(case, expect, observed, ctx, before, after)
        result.update(outcome=outcome, detail=detail)
    except SetupError as exc:
        result.update(outcome="harness error", detail=str(exc))
    finally:
        ctx.cleanup()
        os.chdir(session)
        registry.reset()
        result["seconds"] = round(time.perf_counter() - start, 2)
        if not os.environ.get("RELIABILITY_KEEP"):
            _remove(tmp)
    return result


def _remove(path: Path) -> None:
    """Remove a case folder whatever its cases did to it (read-only folders included)."""
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            target = Path(folder) / name
            if not target.is_symlink():
                with contextlib.suppress(OSError):
                    os.chmod(target, 0o755)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def make_base_run(session: Path) -> Path:
    """The shared tiny run (``diffkit train`` as a child process: the real entry point)."""
    out = session / "base" / "R"
    if (out / "run.json").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "diffkit", "train", "--recipe", "digits", "--steps", "4", "--out", str(out),
        *TINY_BASE, "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=session, env=_worker_env())
    if done.returncode != 0:
        raise RuntimeError(f"the shared tiny run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DIFFKIT_DEBUG", None)
    return env


# -- the worker process ---------------------------------------------------------------------------

_CAP_DAC = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


def _has_dac_override() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & 0b10)
    except (OSError, ValueError):
        pass
    return False


def _drop_dac_and_reexec() -> None:
    """As root, drop the permission-bypass capabilities from the bounding set and re-exec."""
    if os.environ.get("RELIABILITY_DAC_DROPPED") or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    if not _has_dac_override():
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for cap in _CAP_DAC:
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                return
    except (OSError, AttributeError):
        return
    os.environ["RELIABILITY_DAC_DROPPED"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]] if hasattr(sys, "orig_argv") else sys.argv)


def _permissions_enforced(session: Path) -> bool:
    probe = session / "probe-read-only"
    probe.mkdir(exist_ok=True)
    os.chmod(probe, 0o555)
    try:
        (probe / "x").write_text("x")
    except OSError:
        return True
    finally:
        os.chmod(probe, 0o755)
        shutil.rmtree(probe, ignore_errors=True)
    return False


def worker_main(session: Path, fd: int) -> None:
    """Answer case names read from stdin with one JSON line each on ``fd``."""
    _drop_dac_and_reexec()
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = ADDRESS_SPACE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, ADDRESS_SPACE_LIMIT)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    import torch

    torch.set_num_threads(1)
    from tests.reliability.cases import CASES

    by_name = {case.name: case for case in CASES}
    answers = os.fdopen(fd, "w", encoding="utf-8")
    hello = {"ready": True, "permissions_enforced": _permissions_enforced(session), "pid": os.getpid()}
    answers.write(json.dumps(hello) + "\n")
    answers.flush()
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        case = by_name.get(name)
        if case is None:
            result = {"name": name, "outcome": "harness error", "detail": "no such case", "seconds": 0}
        else:
            result = run_case(case, session)
        answers.write(json.dumps(result) + "\n")
        answers.flush()


class Worker:
    """A worker process seen from the parent: send a case, wait for its answer or kill it."""

    STARTUP_S = 120.0

    def __init__(self, session: Path) -> None:
        self.session = session
        read_fd, write_fd = os.pipe()
        self.log = open(session / f"worker-{os.getpid()}-{id(self)}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._worker", str(session), str(write_fd)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, pass_fds=(write_fd,), cwd=REPO,
            env=_worker_env(), start_new_session=True,
        )
        os.close(write_fd)
        self.answers = os.fdopen(read_fd, "r", encoding="utf-8")
        hello = self._read(self.STARTUP_S)
        if hello is None:
            self.kill()
            raise RuntimeError(f"the reliability worker did not start; see {self.log.name}")
        self.permissions_enforced = bool(hello.get("permissions_enforced"))

    def _read(self, timeout: float) -> dict[str, Any] | None:
        ready, _, _ = select.select([self.answers], [], [], timeout)
        if not ready:
            return None
        line = self.answers.readline()
        return json.loads(line) if line else {"died": True}

    def run(self, case: Case) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            assert self.process.stdin is not None
            self.process.stdin.write((case.name + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died(case, start)
        answer = self._read(case.timeout)
        if answer is None:
            self.kill()
            return {
                "name": case.name, "category": case.category, "expect": _static_expect(case), "outcome": "hang",
                "detail": f"no answer within {case.timeout:.0f} s; the worker was killed",
                "seconds": round(time.perf_counter() - start, 2),
            }
        if answer.get("died"):
            return self._died(case, start)
        return answer

    def _died(self, case: Case, start: float) -> dict[str, Any]:
        code = self.process.wait()
        how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit status {code}"
        self.kill()
        return {
            "name": case.name, "category": case.category, "expect": _static_expect(case), "outcome": "raw traceback",
            "detail": f"the worker process died ({how}): a crash, not a named error; see {self.log.name}",
            "seconds": round(time.perf_counter() - start, 2),
        }

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(timeout=10)
        with contextlib.suppress(Exception):
            self.answers.close()

    def close(self) -> None:
        if self.alive and self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
                self.process.wait(timeout=10)
        self.kill()
        self.log.close()


def _static_expect(case: Case) -> str:
    return case.expect if isinstance(case.expect, str) else "depends on the machine"


class Runner:
    """Runs cases in ``jobs`` worker processes (restarted after a hang or a crash)."""

    def __init__(self, session: Path, jobs: int = 1) -> None:
        self.session = Path(session)
        self.session.mkdir(parents=True, exist_ok=True)
        make_base_run(self.session)
        self.jobs = max(1, jobs)
        self._idle: list[Worker] = []
        self._lock = threading.Lock()
        self.permissions_enforced: bool | None = None

    def _take(self) -> Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                worker.close()
        worker = Worker(self.session)
        self.permissions_enforced = worker.permissions_enforced
        return worker

    def run(self, case: Case) -> dict[str, Any]:
        worker = self._take()
        result = worker.run(case)
        result.setdefault("what", case.what)
        result["what"] = case.what
        if worker.alive:
            with self._lock:
                self._idle.append(worker)
        else:
            worker.close()
        return result

    def run_all(self, cases: Sequence[Case], progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(cases)
        queue = list(enumerate(cases))
        queue_lock = threading.Lock()

        def serve() -> None:
            while True:
                with queue_lock:
                    if not queue:
                        return
                    index, case = queue.pop(0)
                results[index] = self.run(case)
                if progress is not None:
                    progress(results[index])

        threads = [threading.Thread(target=serve) for _ in range(min(self.jobs, len(cases)) or 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [r for r in results if r is not None]

    def close(self) -> None:
        with self._lock:
            for worker in self._idle:
                worker.close()
            self._idle.clear()


# -- the report -----------------------------------------------------------------------------------


def tally(results: Sequence[dict[str, Any]], categories: Sequence[str]) -> str:
    """The Markdown table: one row per category, the totals last."""
    columns = ["named error", "raw traceback", "silently wrong", "hang", "data lost", "ok", "harness error"]
    headings = ["category", "cases", "named error", "raw traceback", "silently wrong", "hang", "data lost", "correct success"]
    has_harness = any(r["outcome"] == "harness error" for r in results)
    if has_harness:
        headings.append("harness error")
    rows = ["| " + " | ".join(headings) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headings) - 1)) + "|"]
    order = list(categories) + sorted({r["category"] for r in results} - set(categories))
    totals = dict.fromkeys(columns, 0)
    for category in order:
        mine = [r for r in results if r["category"] == category]
        if not mine:
            continue
        counts = {c: sum(r["outcome"] == c for r in mine) for c in columns}
        for c in columns:
            totals[c] += counts[c]
        cells = [category, str(len(mine)), *(str(counts[c]) for c in columns[:6])]
        if has_harness:
            cells.append(str(counts["harness error"]))
        rows.append("| " + " | ".join(cells) + " |")
    cells = ["**total**", f"**{len(results)}**", *(f"**{totals[c]}**" for c in columns[:6])]
    if has_harness:
        cells.append(f"**{totals['harness error']}**")
    rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def headline(results: Sequence[dict[str, Any]]) -> str:
    """``named error / raw traceback / silently wrong / hang / data lost`` over the error cases, and the successes."""
    count = {o: sum(r["outcome"] == o for r in results) for o in (*OUTCOMES, "harness error")}
    return (
        f"{count['named error'] + count['ok']} / {count['raw traceback']} / {count['silently wrong']} / "
        f"{count['hang']} / {count['data lost']} (named error or correct success / raw traceback / silently wrong / "
        f"hang / data lost) over {len(results)} cases: {count['named error']} named errors, "
        f"{count['ok']} correct successes" + (f", {count['harness error']} harness errors" if count["harness error"] else "")
    )


def failures(results: Sequence[dict[str, Any]], categories: Sequence[str]) -> str:
    """A Markdown list of every case that is not a named error or a correct success."""
    bad = [r for r in results if r["outcome"] not in GOOD]
    if not bad:
        return "None: every case is a named error or a correct success."
    order = {c: i for i, c in enumerate(categories)}
    lines = []
    for r in sorted(bad, key=lambda r: (order.get(r["category"], 99), r["outcome"], r["name"])):
        detail = " ".join(str(r.get("detail", "")).split())
        if len(detail) > 400:
            detail = detail[:399] + "…"
        lines.append(f"- **{r['name']}** ({r['category']}; {r.get('what', '')}): *{r['outcome']}* — {detail}")
    return "\n".join(lines)


def case_list(results: Sequence[dict[str, Any]], categories: Sequence[str]) -> str:
    """Every case, per category: name, bad input, expected and observed outcome."""
    parts = []
    for category in categories:
        mine = [r for r in results if r["category"] == category]
        if not mine:
            continue
        parts.append(f"#### {category} ({len(mine)})\n")
        parts.append("| case | bad input or fault | expected | observed |")
        parts.append("|---|---|---|---|")
        for r in mine:
            what = str(r.get("what", "")).replace("|", "\\|")
            expected = "named error" if r.get("expect") == "error" else "success" if r.get("expect") == "ok" else str(r.get("expect"))
            parts.append(f"| `{r['name']}` | {what} | {expected} | {r['outcome']} |")
        parts.append("")
    return "\n".join(parts)

