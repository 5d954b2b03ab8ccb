"""The notebooks and ``python -m picie_lib run``: clean sources, papermill end to end, failures named."""

import json
import re
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from commands import picie

from picie_lib import notebook, pipeline, report, runs
from picie_lib.claims import COLUMNS
from picie_lib.cli import main
from picie_lib.config import load_preset, save_config

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(notebook.NOTEBOOK_DIR.glob("*.ipynb"))
PARAMETERS = ("preset", "params", "out_dir", "seed", "interactive")
# the results rows of every run: the references, the three methods and IB-Focal's weights at its switch
RESULT_ROWS = {"rgb_kmeans", "untrained", "ce", "focal", "ib_focal", "ib_focal_at_switch"}


def test_the_numbered_notebooks_are_all_there():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [*pipeline.SHARED, *pipeline.PER_RUN, pipeline.COMPARE]
    assert all(re.fullmatch(r"\d\d_[a-z_]+", n) for n in names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_clean_and_parameterised(path):
    raw = json.loads(path.read_text())
    assert all("id" in c for c in raw["cells"]), f"{path.name}: a cell has no id (nbformat 4.5 needs one)"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name} has outputs"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    assigned = set(re.findall(r"^(\w+) = ", tagged[0].source, flags=re.M))
    assert set(PARAMETERS) <= assigned
    assert "interactive = False" in tagged[0].source  # headless by default


def test_every_parameter_the_run_passes_is_one_the_notebook_declares(tmp_path):
    for name_of_notebook, name, extra in pipeline.plan(load_preset("smoke"), tmp_path):
        nb = nbformat.read(notebook.NOTEBOOK_DIR / f"{name_of_notebook}.ipynb", as_version=4)
        tagged = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = set(re.findall(r"^(\w+) = ", tagged.source, flags=re.M))
        assert set(PARAMETERS) | set(extra) <= declared, f"{name}: {set(extra) - declared} not in its parameters cell"


def test_plan_runs_training_and_evaluation_per_method_and_seed(tmp_path):
    steps = pipeline.plan(load_preset("smoke", seeds=[0, 3]), tmp_path)
    names = [name for _, name, _ in steps]
    assert names[:4] == [n for n in pipeline.SHARED if n != "02_views"] and names[-1] == "07_compare"
    assert "05_train-ib_focal-seed3" in names and "06_evaluate-focal-seed0" in names
    assert len(names) == 5 + 2 * 3 * 2 + 1
    # 02_views draws the first seed's trained CE network, so it runs once that run is trained
    views = names.index("02_views")
    assert names.index("05_train-ce-seed0") < views < names.index("05_train-focal-seed0")
    assert steps[views][2] == {"seed": 0, "run_dir": str(tmp_path / "ce-seed0")}
    train = dict((name, extra) for _, name, extra in steps)["05_train-focal-seed3"]
    assert train == {"loss": "focal", "seed": 3, "run_dir": str(tmp_path / "focal-seed3")}


def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    cells[0].metadata["tags"] = ["parameters"]
    nb.cells = cells
    nbformat.write(nb, path)


def test_a_failing_notebook_is_named_with_its_cell(tmp_path):
    _notebook(tmp_path / "09_broken.ipynb", "x = 1", "y = x + 1", "# the bug\nz = y / 0")
    out = tmp_path / "out" / "09_broken.ipynb"
    with pytest.raises(pipeline.NotebookFailed) as err:
        pipeline.execute("09_broken", out, {"x": 2}, cwd=tmp_path)
    message = str(err.value)
    assert "09_broken.ipynb" in message and "ZeroDivisionError" in message and str(out) in message
    assert "'# the bug'" in message
    index = int(re.search(r"in cell (\d+)", message).group(1))
    source = nbformat.read(tmp_path / "09_broken.ipynb", as_version=4)
    assert index == 3 and "z = y / 0" in source.cells[index - 1].source  # counted from 1, as a reader does
    assert out.with_suffix(".html").stat().st_size > 1000  # rendered even though it failed


def test_run_stops_with_a_nonzero_exit_naming_the_notebook(tmp_path, monkeypatch, capsys):
    for name in pipeline.SHARED:
        _notebook(
            tmp_path / f"{name}.ipynb",
            "preset = 'x'",
            "raise ValueError('no data here')" if name == "01_data" else "pass",
        )
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "notebook 01_data.ipynb failed in cell" in err and "no data here" in err
    assert (out / "notebooks" / "00_setup.ipynb").is_file()  # what ran before is kept
    assert not (out / "notebooks" / "02_views.ipynb").exists()  # nothing after the failure


def test_run_rejects_bad_parameters_before_writing(tmp_path, capsys):
    assert main(["run", "--preset", "smoke", "-p", "bogus=1", "--out", str(tmp_path / "r")]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "taken")]) == 2
    assert (tmp_path / "taken" / "x").read_text() == "keep me"


REPO = notebook.NOTEBOOK_DIR.parent


def tracked_state() -> tuple[str, str]:
    """What git sees of the tracked files: which differ from the commit, and how (a dirty tree compares too)."""
    status, diff = (
        subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout
        for args in (["status", "--porcelain", "--untracked-files=no"], ["diff", "--binary"])
    )
    return status, diff


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "smoke"
    before = tracked_state()
    proc = picie("run", "--preset", "smoke", "--out", str(out), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc, before != tracked_state()


def test_a_run_changes_no_tracked_file_and_keeps_its_runtimes_in_its_folder(smoke_run):
    out, _, changed_tracked_files = smoke_run
    assert not changed_tracked_files  # notebooks and notebooks/runtimes.json stay as committed
    table = json.loads((out / "runtimes.json").read_text())
    assert (
        table["preset"] == "smoke"
        and table["overrides"] == {}
        and set(table["per_notebook"]) == {name for _, name, _ in pipeline.plan(load_preset("smoke"), out)}
    )


def test_run_executes_every_notebook_and_writes_the_results(smoke_run):
    out, proc, _ = smoke_run
    steps = pipeline.plan(load_preset("smoke"), out)
    for _, name, _ in steps:
        executed = nbformat.read(out / "notebooks" / f"{name}.ipynb", as_version=4)
        assert executed.metadata["papermill"]["parameters"]["out_dir"] == str(out)
        assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))
        assert (out / "notebooks" / f"{name}.html").stat().st_size > 10_000
    rows = json.loads((out / "results.json").read_text())
    assert {r["loss"] for r in rows} == RESULT_ROWS | {"linear_probe"}
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "seed", *COLUMNS} <= set(header)
    claims = json.loads((out / "claims.json").read_text())
    assert len(claims) == 9 and all(c["holds"] == "one seed" for c in claims)  # smoke: one seed, not judged
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["per_notebook"]) == {name for _, name, _ in steps} and "per_method" in timings
    assert "PiCIE, the paper's row (= PiCIE + H" in proc.stdout


def test_every_figure_is_read_for_the_reader_in_the_notebooks_and_the_report(smoke_run):
    out, _, _ = smoke_run
    published = {"01_data": 2, "02_views": 2, "03_clustering": 2, "04_losses": 3, "05_train-ib_focal-seed0": 1}
    published |= {"06_evaluate-focal-seed0": 4, "07_compare": 4}  # 05 also shows its live curves, unread
    for name, count in published.items():
        html = (out / "notebooks" / f"{name}.html").read_text()
        assert html.count("What to look for.") == count <= html.count("data:image/png"), name
    views = (out / "notebooks" / "02_views.html").read_text()
    assert "trained (ce-seed0)" in views and "mirrored pixel" in views  # the trained network beside the untrained
    assert "all set for this preset; optional and absent: GPU" in (out / "notebooks" / "00_setup.html").read_text()
    assert "nan" not in " ".join(p.read_text() for p in out.rglob("*.reading.md"))
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    readings = re.findall(r"\n\*What to look for\.\* [^\n]+\d", report)  # each with the run's numbers
    assert len(images) >= 20 and len(readings) == len(images)
    assert "Method 2: IB-Focal, seed 0: training curves" in report  # method names, not ids


def _rendered_markdown(html: str) -> list[str]:
    """The text of every rendered Markdown block of an nbconvert HTML page (cells and displayed Markdown)."""
    blocks = re.findall(r'data-mime-type="text/markdown">(.*?)</div>', html, flags=re.S)
    return [re.sub(r"<img[^>]*>", "", block) for block in blocks]  # formulas are drawn as images


def test_executed_notebooks_teach_and_stay_quiet(smoke_run):
    out, _, _ = smoke_run
    pages = {p.stem: p.read_text() for p in (out / "notebooks").glob("*.html")}
    assert len(pages) == 12
    for name, html in pages.items():
        text = " ".join(_rendered_markdown(html))
        assert "Takeaways" in text and "Try this" in text and "Questions" in text, name
        assert "$" not in text, f"{name}: a formula left as raw TeX"
        assert "Next:" in text, name
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html, (
            f"{name}: a stderr block (progress bars, warnings)"
        )
    assert pages["04_losses"].count('class="math"') >= 10  # formulas drawn offline, no MathJax needed
    assert "IB-Focal took over at epoch" in pages["05_train-ib_focal-seed0"]  # takeaways with the run's numbers
    report = (out / "report.md").read_text()
    conclusion = report[report.index("## Conclusion of this run") :]
    assert "Focal hurts stuff (Stuff Acc below PiCIE's)**: not judged (one seed)" in conclusion


def test_notebook_kernels_run_quiet_over_ipc(tmp_path, capfd):
    _notebook(tmp_path / "09_env.ipynb", "x = 1", "import os\nprint('bars', os.environ.get('PICIE_PROGRESS'))")
    pipeline.execute("09_env", tmp_path / "out" / "09_env.ipynb", {}, cwd=tmp_path)
    executed = nbformat.read(tmp_path / "out" / "09_env.ipynb", as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "bars 0\n"  # no progress bars in saved outputs
    assert "without encryption" not in capfd.readouterr().err  # the kernel's TCP warning has no cause
    assert "PICIE_PROGRESS" not in __import__("os").environ  # restored for the caller


def test_every_notebook_states_its_runtime_from_the_committed_table(tmp_path):
    table = json.loads(report.RUNTIMES.read_text())
    assert table["preset"] == "demo" and set(table["per_notebook"]) == {
        name for _, name, _ in pipeline.plan(load_preset("demo"), tmp_path)
    }
    for path in NOTEBOOKS:
        line = report.runtime_line(path.stem, table)
        assert line and line in nbformat.read(path, as_version=4).cells[0].source, path.name
    # `runtimes DIR` publishes a demo run's table and lines (into a copy here): one line per notebook, however
    # often; a run of another preset, or with -p, is refused and changes nothing
    folder, run_dir = tmp_path / "nb", tmp_path / "run"
    folder.mkdir()
    run_dir.mkdir()
    for path in NOTEBOOKS:
        (folder / path.name).write_text(path.read_text())
    timings = {name: 1.0 + i for i, name in enumerate(table["per_notebook"])}
    for preset, overrides in (("smoke", {}), ("demo", {"seed": 1})):
        save_config(load_preset(preset, **overrides), run_dir / "config.json")
        runs.write_json(run_dir / "runtimes.json", report.runtimes_table(timings, 600.0, preset, overrides))
        with pytest.raises(ValueError, match="the notebooks state the demo preset's runtimes as shipped"):
            report.publish_runtimes(run_dir, folder)
    # the table's words alone are not believed: the run's own parameters must be the demo's
    runs.write_json(run_dir / "runtimes.json", report.runtimes_table(timings, 600.0, "demo", {}))
    with pytest.raises(ValueError, match="ran other parameters than the demo preset's"):
        report.publish_runtimes(run_dir, folder)
    assert [(folder / p.name).read_text() for p in NOTEBOOKS] == [p.read_text() for p in NOTEBOOKS]
    save_config(load_preset("demo"), run_dir / "config.json")
    for _ in range(2):
        report.publish_runtimes(run_dir, folder)
    title = nbformat.read(folder / "05_train.ipynb", as_version=4).cells[0].source
    assert title.count(report.RUNTIME_MARK) == 1 and "CE 5 s, Focal 8 s, IB-Focal 10 s" in title
    assert "whole run 10.0 min" in title
    assert json.loads((folder / "runtimes.json").read_text())["per_notebook"] == timings


def test_report_has_the_table_the_claims_and_figures_that_exist(smoke_run):
    out, _, _ = smoke_run
    report = (out / "report.md").read_text()
    assert "| PiCIE, the paper's row (= PiCIE + H, Cho et al. 2021) | 49.99 | 14.36 |" in report
    assert "The paper's claims" in report and "figures/07_protocols.png" in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert (
        "results.png" in images and "figures/07_figure2.png" in images and "ce-seed0/figures/loss_curves.png" in images
    )
    assert all((out / image).stat().st_size > 5_000 for image in images)
    links = re.findall(r"\[html\]\(([^)]+)\)", report)
    assert len(links) == 12 and all((out / link).is_file() for link in links)


def test_setup_asks_for_a_gpu_only_where_the_preset_needs_one():
    rows = notebook.setup_report(load_preset("smoke"))
    gpu = next(r for r in rows if r["item"] == "GPU (CUDA)")
    if gpu["found"] == "none":
        assert gpu["status"] == "optional" and notebook.setup_summary(rows).startswith("all set for this preset")
        paper = notebook.setup_report(load_preset("paper", data_root="/nonexistent"))
        summary = notebook.setup_summary(paper)
        assert summary.startswith("missing for this preset: GPU (CUDA), data set cocostuff27")
    else:
        assert gpu["status"] == "ok"


def _children_by_parent_pid(parent: int) -> list[int]:
    """The processes started for ``parent`` by jupyter_client (``JPY_PARENT_PID`` in their environment)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"JPY_PARENT_PID={parent}\0".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_a_run_killed_midway_resumes_to_the_scores_of_an_uninterrupted_one(smoke_run, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from commands import ENV, command

    out = tmp_path / "killed"
    proc = subprocess.Popen(  # its own process group: the kill reaches the notebook kernels too
        command("run", "--preset", "smoke", "--out", str(out)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not (out / "ib_focal-seed0" / "checkpoint.pt").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    kernels = _children_by_parent_pid(proc.pid)  # jupyter starts kernels in their own session
    assert kernels, "expected the kernel that trains IB-Focal"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through IB-Focal's training, CE and Focal trained and scored
    proc.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in kernels):  # they watch their parent and stop
        assert time.monotonic() < deadline, "a kernel outlived the run it belonged to"
        time.sleep(0.1)
    assert not (out / "results.json").exists()
    refused = picie("run", "--preset", "smoke", "--out", str(out), timeout=60)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    done = [
        out / "ce-seed0" / "checkpoint.pt",
        out / "ce-seed0" / "metrics.json",
        out / "untrained-seed0" / "metrics.json",
        out / "focal-seed0" / "checkpoint.pt",
        out / "focal-seed0" / "metrics.json",
    ]
    stamps = [p.stat().st_mtime_ns for p in done]
    resumed = picie("run", "--preset", "smoke", "--out", str(out), "--resume", timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [p.stat().st_mtime_ns for p in done] == stamps  # nothing done is retrained or rescored

    def scores(folder):
        return [
            {k: v for k, v in r.items() if k != "seconds"} for r in json.loads((folder / "results.json").read_text())
        ]

    assert scores(out) == scores(smoke_run[0])
    assert (out / "report.md").is_file() and len(list((out / "notebooks").glob("*.html"))) == 12


def test_run_paper_preset_on_a_tiny_coco_layout_root_with_bad_files(tmp_path):
    from layouts import write_cocostuff
    from PIL import Image

    layout = write_cocostuff(tmp_path / "coco")
    corrupt = layout.root / "images" / "train2017" / f"{layout.ids['train2017'][2]}.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:1500])  # truncated
    bad_label = layout.root / "annotations" / "val2017" / f"{layout.ids['val2017'][0]}.png"
    Image.fromarray(np.full((427, 640), 200, np.uint8)).save(bad_label)  # 200 is no COCO-Stuff id
    small = {  # the paper preset with the sizes and epochs of a test; data_root relative to the working folder
        "data_root": "coco", "pretrained": None, "curated": False, "res": 64, "base_res": 96,
        "batch_size_train": 3, "batch_size_cluster": 3, "eval_batch_size": 2, "kmeans_init_batches": 1,
        "kmeans_iters": 5, "epochs_ce": 1, "epochs_focal": 1, "epochs_ib_focal": 2, "num_workers": 0,
    }  # fmt: skip
    args = [a for k, v in small.items() for a in ("-p", f"{k}={'null' if v is None else v}")]
    proc = picie("run", "--preset", "paper", "--out", "paper", *args, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "paper"
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["n_clusters"], config["lr"], config["balance"]) == (
        "cocostuff27",
        27,
        1e-4,
        "picie",
    )
    assert config["data_root"] == str(layout.root)  # made absolute: the notebooks run in notebooks/
    rows = json.loads((out / "results.json").read_text())
    assert {r["loss"] for r in rows} == RESULT_ROWS  # no probe on COCO
    val = json.loads((out / "ce-seed0" / "metrics.json").read_text())
    assert sum(r["pixels"] for r in val["per_class"]) == np.asarray(val["confusion"]).sum() > 0
    assert val["skipped_files"] == [str(corrupt), str(bad_label)]  # each bad file left out and named
    assert json.loads((out / "ce-seed0" / "summary.json").read_text())["skipped_files"] == [str(corrupt)]
    assert "| PiCIE, the paper's row (= PiCIE + H, Cho et al. 2021) | 49.99 |" in (out / "report.md").read_text()


def _stub_notebooks(folder: Path) -> None:
    folder.mkdir()
    for name in (*pipeline.SHARED, *pipeline.PER_RUN):
        _notebook(folder / f"{name}.ipynb", "preset = out_dir = loss = seed = run_dir = None", "pass")
    _notebook(
        folder / f"{pipeline.COMPARE}.ipynb",
        "out_dir = None",
        "open(out_dir + '/results.md', 'w').write('# PiCIE with CE, Focal and IB-Focal: results')",
    )


def test_run_overwrite_removes_what_an_earlier_run_wrote(tmp_path, monkeypatch):
    _stub_notebooks(tmp_path / "nb")
    monkeypatch.setattr(pipeline, "NOTEBOOK_DIR", tmp_path / "nb")
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 0
    stale = out / "ce-seed0" / "metrics.json"
    runs.write_json(stale, {})  # as the run's notebooks write a score: listed in the run's manifest
    (out / "mine.txt").write_text("not the run's")
    assert main(["run", "--preset", "smoke", "--out", str(out)]) == 2  # no silent overwrite
    assert stale.is_file()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--overwrite"]) == 0
    assert not stale.exists() and (out / "mine.txt").is_file() and (out / "report.md").is_file()


def test_relative_paths_are_read_from_the_repository_root_in_the_notebooks(tmp_path):
    cfg = notebook.notebook_config("paper", {"class_table": "t.yaml", "pretrained": "w/r18.pth"})
    root = notebook.NOTEBOOK_DIR.parent
    assert (cfg.data_root, cfg.class_table, cfg.pretrained) == (
        str(root / "data" / "cocostuff"),
        str(root / "t.yaml"),
        str(root / "w" / "r18.pth"),
    )
    assert notebook.notebook_config("paper").pretrained == "imagenet"  # a name, not a path
    assert notebook.absolute_paths(cfg, tmp_path) == {}  # already absolute
