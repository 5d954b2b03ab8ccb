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
