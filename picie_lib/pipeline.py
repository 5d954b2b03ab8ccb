"""``python -m picie_lib run``: the numbered notebooks, executed headless with papermill.

The notebooks (``notebooks/NN_*.ipynb``) are the story; this module only decides which to run
with which parameters, and collects what they wrote into one folder:

    DIR/config.json, environment.json     the run's parameters and versions
    DIR/notebooks/NN_name[-method-seedS].{ipynb,html}   every executed notebook, and its HTML
    DIR/{method}-seed{S}/                 one training run and its evaluation per method and seed
    DIR/figures/*.png                     the figures the notebooks saved
    DIR/results.{csv,json,md,png}, claims.{csv,json}   the comparison (07_compare)
    DIR/report.md                         the table, the claims and the figures, for reading
    DIR/timings.json                      seconds per method and per notebook
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
from pathlib import Path

from picie_lib.compare import resumable
from picie_lib.config import LOSSES, Config, checked, did_you_mean, load_preset, preset_path, save_config
from picie_lib.notebook import NOTEBOOK_DIR, absolute_paths
from picie_lib.progress import progress
from picie_lib.report import report_markdown, runtimes_table
from picie_lib.rules import SEED, SWITCH, boolean, choice, integer, optional, text
from picie_lib.run_folder import exclusive, new_run_dir, record_in_manifest, record_written, refuse_foreign
from picie_lib.runs import atomic_write_text, read_json, record_session, temporary_beside, write_json
from picie_lib.train import check_before_writing

SHARED = ("00_setup", "01_data", "02_views", "03_clustering", "04_losses")
PER_RUN = ("05_train", "06_evaluate")
COMPARE = "07_compare"


class NotebookFailed(RuntimeError):
    """A notebook raised: names the notebook, the cell and where the executed copy is."""


def plan(cfg: Config, out_dir: Path) -> list[tuple[str, str, dict]]:
    """(notebook, executed name, extra parameters) in the order they run; the shared notebooks use
    the first seed (03_clustering's reference points are that seed's rows of the table). 02_views runs
    once the first seed's CE run is trained, to draw its features beside the untrained network's."""
    first = cfg.seeds[0]
    steps = [(name, name, {"seed": first}) for name in SHARED if name != "02_views"]
    for seed in cfg.seeds:
        for loss in LOSSES:
            run = {"loss": loss, "seed": seed, "run_dir": str(out_dir / f"{loss}-seed{seed}")}
            steps += [(name, f"{name}-{loss}-seed{seed}", run) for name in PER_RUN]
            if (seed, loss) == (first, "ce"):
                steps.append(("02_views", "02_views", {"seed": first, "run_dir": run["run_dir"]}))
    steps.append((COMPARE, COMPARE, {}))
    return steps


MATH = re.compile(r"(?<!\\)\$([^$]+?)\$")  # $...$ in a Markdown cell, on one line or across lines


def math_image(tex: str, size: float = 11.0) -> str:
    """An inline ``<img>`` of the formula ``tex`` drawn by matplotlib's mathtext as SVG, aligned on the
    text's baseline: formulas that read offline, where MathJax from a CDN cannot load."""
    import base64
    import html
    import io

    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    tex = " ".join(tex.split())  # a formula broken across source lines
    prop = FontProperties(size=size)
    depth = mathtext.MathTextParser("path").parse(f"${tex}$", dpi=72, prop=prop).depth
    image = io.BytesIO()
    mathtext.math_to_image(f"${tex}$", image, prop=prop, format="svg")
    data = base64.b64encode(image.getvalue()).decode()
    return (
        f'<img class="math" alt="{html.escape(tex, quote=True)}" style="vertical-align: -{depth:.1f}pt" '
        f'src="data:image/svg+xml;base64,{data}">'
    )


def html_copy(notebook: Path) -> str:
    """The executed notebook as one HTML file that needs no network: images inline, formulas drawn."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = MATH.sub(lambda m: math_image(m.group(1)), cell.source)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def _kernel_config(folder: str):
    """Local kernels over IPC sockets in ``folder``: no TCP port, so ipykernel has no unencrypted TCP to
    warn about; and no progress bars (``PICIE_PROGRESS=0``) in outputs that are kept. Kernels log only
    what is fatal: at a notebook's end the clean-up interrupts the kernel before it shuts it down, and a
    kernel still finishing a message logs that interrupt as an error on the job's terminal. A cell's
    error is in the executed notebook and in the run's own error line."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets.config import Config

    class QuietKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return super().format_kernel_cmd([*(extra_arguments or []), "--IPKernelApp.log_level=CRITICAL"])

    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(Path(folder) / "kernel")
    config.NotebookClient.kernel_manager_class = QuietKernelManager
    return config


def kernels_of(pid: int) -> list[int]:
    """The notebook kernels (ipykernel processes) whose parent is ``pid``. Linux (reads /proc)."""
    kernels = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"ipykernel" in (stat.parent / "cmdline").read_bytes():
                kernels.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):  # a process that ended meanwhile
            continue
    return kernels


def stop_kernels(wait: float = 5.0) -> list[int]:
    """End this process's notebook kernels now (``run`` on Ctrl-C or SIGTERM), before papermill's own
    clean-up asks a busy kernel to shut down and it prints a traceback on its closed sockets. The kernel
    gets SIGTERM, then SIGKILL after ``wait`` seconds; what a killed training was writing is a temporary
    file that the next start removes (``run_folder.remove_stale_temporaries``). Linux (reads /proc)."""
    import logging
    import signal

    logging.disable(logging.ERROR)  # the job is stopping: nbclient's "Kernel died ..." is no news
    kernels = kernels_of(os.getpid())
    for pid in kernels:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for pid in kernels:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and _is_running(pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return kernels


def _is_running(pid: int) -> bool:
    """False once ``pid`` is a zombie (ended, not yet reaped by its parent) or gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def notebook_parameters(notebook: str) -> set[str]:
    """The names the parameters cell of ``notebooks/<notebook>.ipynb`` assigns."""
    import nbformat

    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: notebook not found (expected a name like 06_evaluate)")
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return set(re.findall(r"^(\w+) = ", cell.source, flags=re.M))


NOTEBOOK_RULES = {  # what the parameters cells' own names accept (``params`` is checked as the configuration)
    "preset": optional(text),
    "seed": SEED,
    "loss": choice(*LOSSES),
    "epochs": optional(integer(1)),
    "switch": optional(SWITCH),
    "interactive": boolean,
    "resume": boolean,
    "out_dir": text,
    "run_dir": optional(text),
}


def check_notebook_parameters(notebook: str, given: dict) -> None:
    """What papermill would only find in the kernel, found before it starts, each a ``ValueError`` of one line: a
    name the notebook's parameters cell does not declare (with the closest one it does), a value its rule
    refuses, a preset that is not there, and ``params`` that the configuration refuses."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(given) - declared)
    if unknown:
        raise ValueError(f"-p {unknown[0]}: not in {notebook}'s parameters cell{did_you_mean(unknown, declared)}")
    for key, value in given.items():
        rule = NOTEBOOK_RULES.get(key)
        if rule is not None and not rule.holds(value):
            raise ValueError(f"-p {key}={value!r}: expected {rule.expected}")
    if given.get("preset") is not None:
        preset_path(given["preset"])
    params = given.get("params", {})
    if not isinstance(params, dict):
        raise ValueError(f"-p params={params!r}: expected a mapping of parameters, e.g. params={{epochs_ce: 4}}")
    checked(params, "-p params")


def execute(notebook: str, output: Path, parameters: dict, cwd: Path | None = None) -> None:
    """Run ``cwd/notebook.ipynb`` (default: the repository's notebooks) with papermill into
    ``output``, and render the executed copy to HTML beside it (``html_copy``), failed or not."""
    import tempfile

    import papermill

    cwd = Path(cwd or NOTEBOOK_DIR)
    source = cwd / f"{notebook}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: notebook not found (the notebooks live in the repository's notebooks/)")
    html = output.with_suffix(".html")
    for path in (output, html):  # the tracked notebooks, a user's file: never written over
        refuse_foreign(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    record_written(output)
    executing = temporary_beside(output)  # papermill writes cell by cell: into a file of its own, renamed at the end
    quiet = os.environ.get("PICIE_PROGRESS")
    os.environ["PICIE_PROGRESS"] = "0"  # the kernel inherits it
    try:
        with tempfile.TemporaryDirectory(prefix="picie-kernel-") as sockets, warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The specified file .* does not end in one of", UserWarning)  # the .tmp
            papermill.execute_notebook(
                str(source),
                executing,
                parameters=parameters,
                kernel_name="python3",
                cwd=str(cwd),
                progress_bar=False,
                config=_kernel_config(sockets),
            )
    except papermill.PapermillExecutionError as err:
        import nbformat

        cells = nbformat.read(source, as_version=4).cells
        number = next((i + 1 for i, c in enumerate(cells) if c.source == err.source), "?")
        first_line = next((line for line in err.source.splitlines() if line.strip()), "")
        raise NotebookFailed(
            f"notebook {source.name} failed in cell {number} of {len(cells)} (In [{err.exec_count}]: {first_line!r}): "
            f"{err.ename}: {err.evalue}; the executed copy with the traceback is {output}"
        ) from None
    except Exception as err:  # the kernel died (out of memory, killed), a timeout, ...
        raise NotebookFailed(
            f"notebook {source.name} stopped: {type(err).__name__}: {err}; what it ran is in {output}"
        ) from err
    finally:
        if quiet is None:
            os.environ.pop("PICIE_PROGRESS", None)
        else:
            os.environ["PICIE_PROGRESS"] = quiet
        _finish_executed(executing, output, html)


def _finish_executed(executing: str, output: Path, html: Path) -> None:
    """Rename what papermill wrote over ``output`` (the rename replaces a link or another name of a file, never
    what they lead to) and render it to ``html``; a rendering problem must not hide the notebook's own error."""
    if Path(executing).stat().st_size == 0:  # papermill stopped before its first write
        Path(executing).unlink(missing_ok=True)
        return
    os.replace(executing, output)
    try:
        atomic_write_text(html, html_copy(output))
    except Exception as err:
        print(f"warning: no HTML for {output}: {type(err).__name__}: {err}", file=sys.stderr)


def default_out_dir(preset: str) -> Path:
    """Where ``run`` writes when no ``--out`` is given: outputs/PRESET-YYYYmmdd-HHMMSS."""
    return Path(f"outputs/{Path(preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def run(
    preset: str,
    out_dir: Path | None = None,
    overrides: dict | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Execute the notebooks for ``preset`` into ``out_dir`` and write ``report.md``; returns the folder.
    ``resume`` continues a run of the same configuration in ``out_dir``: its finished trainings and their
    scores are kept, an unfinished training resumes from its checkpoint, the notebooks run again."""
    overrides = dict(overrides or {})
    given = dict(overrides)  # what the user changed (runtimes.json says it), before the paths are made absolute
    cfg = load_preset(preset, overrides_source="-p", **overrides)  # fails here, before anything is written
    if Path(preset).suffix in (".yaml", ".yml"):
        preset = str(Path(preset).resolve())
    paths = absolute_paths(cfg, Path.cwd())  # the notebooks run in notebooks/, not here
    overrides.update(paths)
    cfg = cfg.replace(**paths)
    out_dir = Path(out_dir or default_out_dir(preset)).resolve()
    if resume and not (out_dir / "config.json").is_file():
        raise FileNotFoundError(f"{out_dir}: nothing to resume there (no config.json); start it without --resume")
    check_before_writing(cfg, LOSSES)  # what would stop a notebook's training stops the run first
    with exclusive(out_dir):
        return _run(cfg, preset, out_dir, overrides, overwrite, resume, given)


def _run(cfg: Config, preset: str, out_dir: Path, overrides: dict, overwrite: bool, resume: bool, given: dict):
    if resume:
        resumable(out_dir, cfg)
    else:  # with overwrite, what earlier runs wrote there goes, and nothing else (run_folder.clear_run)
        new_run_dir(out_dir, overwrite=overwrite)
    save_config(cfg, out_dir / "config.json")
    record_session(out_dir)
    for _, _, extra in plan(cfg, out_dir):  # the training folders the notebooks make are this run's
        if "loss" in extra:
            record_in_manifest(out_dir, Path(extra["run_dir"]).name)
    common = {"preset": preset, "params": overrides, "out_dir": str(out_dir), "interactive": False}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for notebook, name, extra in progress(plan(cfg, out_dir), "notebooks", leave=True):
        t0 = time.perf_counter()
        execute(notebook, out_dir / "notebooks" / f"{name}.ipynb", {**common, **extra})
        timings[name] = time.perf_counter() - t0
        print(f"{name}: {timings[name]:.0f} s", flush=True)
    wall = time.perf_counter() - start
    method_timings = out_dir / "timings.json"  # 07_compare wrote the seconds per method there
    previous = read_json(method_timings) if method_timings.is_file() else {}
    write_json(method_timings, {**previous, "wall_seconds": wall, "per_notebook": timings})
    atomic_write_text(out_dir / "report.md", report_markdown(out_dir, cfg, wall, timings))
    if not resume:  # a resumed run's seconds are not the whole run's
        write_json(out_dir / "runtimes.json", runtimes_table(timings, wall, preset, given))
    return out_dir
