"""Every reliability case must be a named error or a correct success (see docs/reliability.md).

One test per case of :mod:`tests.reliability.cases`, all run by one worker process (torch is
imported once); ``python -m tests.reliability`` runs the same cases and prints the tally.
"""

from __future__ import annotations

import pytest

from tests.reliability.cases import CASES
from tests.reliability.harness import GOOD, Runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("reliability"))
    yield runner
    runner.close()


BY_NAME = {c.name: c for c in CASES}


@pytest.mark.parametrize("name", list(BY_NAME))
def test_case(runner, name):
    case = BY_NAME[name]
    result = runner.run(case)
    assert result["outcome"] in GOOD, (
        f"{case.name} [{case.category}] {case.what}\n"
        f"expected: {result.get('expect', case.expect)}; observed: {result['outcome']}\n{result.get('detail', '')}"
    )
