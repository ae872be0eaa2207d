"""The reliability tally: bad inputs and faults, each run and classified by what diffkit did.

A *case* (:class:`~tests.reliability.harness.Case`) is one careless or hostile input: a bad
command-line value, a damaged run folder, a hostile ``pipeline.json``, a non-finite tensor, …
and what a correct outcome is: a named :class:`~diffkit.errors.DiffkitError` (``"error"``) or a
success that a ``verify`` function checks (``"ok"``). The harness runs every case in a worker
process under a time bound and classifies what it observed:

=================  ===========================================================================
named error        an error was expected and diffkit raised a ``DiffkitError`` (the CLI: exit 2,
                   ``diffkit: error: …``, no traceback) whose message names what the case needs
correct success    success was expected and ``verify`` passed
raw traceback      any other exception, a traceback, an unexpected exit status, a crash, or an
                   error message that does not name what it must
silently wrong     an error was expected but the call succeeded, a valid input was refused,
                   ``verify`` failed, or an error came only after work was spent (checkpoints)
hang               the case ran past its time bound (the worker is killed and restarted)
data lost          a file the case protects (the user's, an earlier run's) changed or vanished
=================  ===========================================================================

``python -m tests.reliability`` prints the tally (``--write docs/reliability.md`` regenerates
the document); ``tests/reliability/test_reliability.py`` runs every case under pytest. The
cases are in :mod:`tests.reliability.cases`: adding one is one ``case(...)`` call there.
"""
