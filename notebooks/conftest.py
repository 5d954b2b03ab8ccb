"""``pytest --nbval-lax notebooks/``: the notebooks run on their defaults (the smoke preset) and write
into a fresh temporary folder (their ``out_dir`` reads PICIE_NOTEBOOK_OUT), never into outputs/."""

import os
import tempfile

os.environ.setdefault("PICIE_NOTEBOOK_OUT", tempfile.mkdtemp(prefix="picie-notebooks-"))
os.environ.setdefault("PICIE_PROGRESS", "0")
