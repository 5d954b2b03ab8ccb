"""The suite's two tiers: ``pytest -m "not slow"`` is the unit tier (under a minute on two cores), and a
test module that starts processes (the CLI, torchrun, notebooks, data-loader workers) is in the slow tier."""

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
STARTS_PROCESSES = re.compile(r"^(import subprocess|import torch\.multiprocessing|from commands import)", re.M)
MARKED_SLOW = re.compile(r"^pytestmark = (pytest\.mark\.slow\b|\[[^\]]*pytest\.mark\.slow\b)", re.M)


@pytest.mark.parametrize("module", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_a_module_that_starts_processes_is_in_the_slow_tier(module):
    text = module.read_text()
    if STARTS_PROCESSES.search(text):
        assert MARKED_SLOW.search(text), f"{module.name} starts processes: mark it `pytestmark = pytest.mark.slow`"


def test_the_rule_tells_the_tiers_apart():
    assert STARTS_PROCESSES.search("import os\nimport subprocess\n")
    assert not STARTS_PROCESSES.search("import os\n")
    assert MARKED_SLOW.search("pytestmark = [pytest.mark.timeout(9), pytest.mark.slow]  # why")
    assert not MARKED_SLOW.search("pytestmark = pytest.mark.timeout(9)")


def test_the_budget_names_the_test_the_module_and_the_tier_that_go_over():
    from budget import MODULE_SECONDS, OVER_TEST_SECONDS, TEST_SECONDS, UNIT_TIER_SECONDS
    from conftest import over_budget

    seconds = {"tests/test_a.py::test_slow": TEST_SECONDS + 1, "tests/test_a.py::test_quick": 1.0}
    seconds["tests/test_b.py::test_x"] = MODULE_SECONDS["*"] - 1
    problems = over_budget(seconds, {"tests/test_a.py", "tests/test_b.py"}, 1.0, unit_tier=False)
    assert problems[0].startswith(f"tests/test_a.py::test_slow: {TEST_SECONDS + 1} s, over the {TEST_SECONDS} s this")
    assert problems[1].startswith("tests/test_a.py: ") and len(problems) == 2  # test_b within its share
    assert over_budget(seconds, set(), 2.0, unit_tier=False) == []  # float32: twice the time allowed, and a part ran
    assert over_budget({"tests/t.py::u": UNIT_TIER_SECONDS + 1}, set(), 1.0, unit_tier=True)[0].startswith("the unit")
    (named, limit), *_ = OVER_TEST_SECONDS.items()  # a test with a limit of its own is held to that one
    assert over_budget({named: limit - 1}, set(), 1.0, unit_tier=False) == []
    assert over_budget({named: limit + 1}, set(), 1.0, unit_tier=False)[0].startswith(f"{named}: {limit + 1} s")
