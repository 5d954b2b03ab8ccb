"""``pytest --nbval-lax notebooks/``: the notebooks run on their defaults (the smoke preset) and write
into a fresh temporary folder (their ``out_dir`` reads PICIE_NOTEBOOK_OUT), never into outputs/.
The folder (about 0.5 GB of checkpoints) is removed when every notebook passed, and kept otherwise."""

import os
import shutil
import tempfile

if "PICIE_NOTEBOOK_OUT" not in os.environ:
    _TEMPORARY_OUT = tempfile.mkdtemp(prefix="picie-notebooks-")
    os.environ["PICIE_NOTEBOOK_OUT"] = _TEMPORARY_OUT
else:
    _TEMPORARY_OUT = None
os.environ.setdefault("PICIE_PROGRESS", "0")


def pytest_sessionfinish(session, exitstatus):
    if _TEMPORARY_OUT is not None and exitstatus == 0:
        shutil.rmtree(_TEMPORARY_OUT, ignore_errors=True)
