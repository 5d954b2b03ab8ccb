"""The suite's time budget, in seconds on a 2-core CPU with bfloat16 instructions (AVX-512 BF16), held by the suite
itself (tests/conftest.py): a module whose tests all ran and took more than its share, or one test (its fixtures'
setup included) over ``TEST_SECONDS``, fails the session with a line that names it. A new test goes into its
module's share; raise a share only with the measurement that needs it (docs/tests.md, "Budget")."""

TEST_SECONDS = 180  # one test, its fixtures' share included
UNIT_TIER_SECONDS = 60  # pytest -m "not slow", the whole tier
FLOAT32_FACTOR = 2.5  # on a CPU without bfloat16 instructions float32 runs, and every limit is this much larger

# Tests allowed over TEST_SECONDS, each with the seconds it may take: a list to shorten, not to grow.
OVER_TEST_SECONDS = {
    # a whole notebook run killed mid-way, refused, resumed: 13 notebook executions, 226 s measured
    # the demo's pretext backbone, trained once (about 190 s), then a reduced demo training scored: 265 s expected
    "tests/test_demo_learns.py::test_training_lifts_all_accuracy_above_the_floor": 320,
    "tests/test_notebooks.py::test_a_run_killed_midway_resumes_to_the_scores_of_an_uninterrupted_one": 270,
}

# Each module's share, about 1.2 times its measured seconds (outputs/test-durations.json after `make test`).
MODULE_SECONDS = {
    "test_notebooks.py": 620,  # three whole notebook runs (smoke, killed and resumed, paper on a tiny COCO root)
    "test_try_this.py": 620,  # every notebook's "Try this" prompt, each a notebook execution
    "test_distributed.py": 340,  # torchrun with two processes
    "test_faults.py": 220,
    "test_demo_learns.py": 330,  # the pretext backbone (190 s) and a reduced demo run
    "test_reliability.py": 130,
    "test_train.py": 110,
    "test_run_folders.py": 80,
    "test_cli.py": 60,
    "test_outside_the_run.py": 50,
    "*": 30,  # a module not listed
}
