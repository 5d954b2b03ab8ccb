"""The suite's time budget (docs/tests.md), held by the suite itself: every test's seconds are recorded, written to
``outputs/test-durations.json`` (``PICIE_TEST_DURATIONS`` moves it) and checked at the end of the session against
``budget.py``: a module whose tests ran whole over its share, or one test over ``TEST_SECONDS``, fails the session
with a line that names it. The limits are for a 2-core CPU with bfloat16 instructions; on one without, float32
runs and they are multiplied by ``FLOAT32_FACTOR``."""

import os
from collections import defaultdict
from pathlib import Path

from budget import FLOAT32_FACTOR, MODULE_SECONDS, OVER_TEST_SECONDS, TEST_SECONDS, UNIT_TIER_SECONDS

from picie_lib.runs import BF16_FLAGS, cpu_flags, write_json

_SECONDS: dict[str, float] = defaultdict(float)
_DESELECTED: set[str] = set()
_COLLECTED: dict[str, int] = defaultdict(int)


def pytest_deselected(items):
    _DESELECTED.update(item.nodeid.split("::")[0] for item in items)


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        _COLLECTED[item.nodeid.split("::")[0]] += 1


def pytest_runtest_logreport(report):
    _SECONDS[report.nodeid] += report.duration  # setup, call and teardown


def module_seconds(seconds: dict[str, float]) -> dict[str, float]:
    """Each test module's sum of the recorded ``seconds`` (per test id), slowest first."""
    per_module: dict[str, float] = defaultdict(float)
    for test, s in seconds.items():
        per_module[test.split("::")[0]] += s
    return dict(sorted(per_module.items(), key=lambda kv: -kv[1]))


def over_budget(seconds: dict[str, float], whole: set[str], factor: float, unit_tier: bool) -> list[str]:
    """The lines that say which limit the recorded ``seconds`` (per test id) break: a test over ``TEST_SECONDS``
    (or its own limit in ``OVER_TEST_SECONDS``), a module of ``whole`` (every test of it ran) over its
    ``MODULE_SECONDS``, the unit tier over its minute."""
    problems = [
        f"{test}: {s:.0f} s, over the {limit:.0f} s this test may take (tests/budget.py)"
        for test, s in seconds.items()
        if s > (limit := OVER_TEST_SECONDS.get(test, TEST_SECONDS) * factor)
    ]
    per_module = module_seconds(seconds)
    for module in sorted(whole):
        limit = MODULE_SECONDS.get(Path(module).name, MODULE_SECONDS["*"]) * factor
        if per_module.get(module, 0.0) > limit:
            problems.append(f"{module}: {per_module[module]:.0f} s, over its share of {limit:.0f} s (tests/budget.py)")
    if unit_tier and sum(seconds.values()) > UNIT_TIER_SECONDS * factor:
        problems.append(f"the unit tier: {sum(seconds.values()):.0f} s, over {UNIT_TIER_SECONDS * factor:.0f} s")
    return problems


def pytest_sessionfinish(session, exitstatus):
    if not _SECONDS or session.config.option.collectonly:
        return
    factor = 1.0 if BF16_FLAGS & cpu_flags() else FLOAT32_FACTOR
    ran = defaultdict(int)
    for test in _SECONDS:
        ran[test.split("::")[0]] += 1
    whole = {m for m, n in _COLLECTED.items() if m not in _DESELECTED and ran[m] == n and m.startswith("tests/")}
    unit_tier = session.config.option.markexpr == "not slow"
    problems = over_budget(dict(_SECONDS), whole, factor, unit_tier)
    root = Path(__file__).resolve().parents[1]
    path = Path(os.environ.get("PICIE_TEST_DURATIONS", root / "outputs" / "test-durations.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bf16": factor == 1.0,
        "total_seconds": sum(_SECONDS.values()),
        "modules": module_seconds(_SECONDS),
        "tests": dict(sorted(_SECONDS.items(), key=lambda kv: -kv[1])),
        "over_budget": problems,
    }
    write_json(path, record)
    if problems and session.exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            reporter.write_line(f"BUDGET: {line}", red=True)
        session.exitstatus = 1
