"""Every notebook's "Try this": each prompt's parameters are read from the notebook's own text (the `name = value`
spans a student copies into the parameters cell, or passes to papermill with -p / -y), run on the smoke preset with
papermill, and the change the prompt promises is checked: scores recomputed and recorded, a retrain where training
changes, or a refusal that names the parameter where a folder holds another setting."""

import ast
import json
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
from commands import picie

from picie_lib import pipeline
from picie_lib.notebook import NOTEBOOK_DIR

# slow: starts notebook kernels and trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow

NOTEBOOKS = [p.stem for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))]
ASSIGNMENT = re.compile(r"`(\w+) = ([^`]+)`")
FOLDERS = ("out_dir", "run_dir")  # a prompt's folder, e.g. "../outputs/focal", becomes one under the test's tmp


def prompts(name: str) -> list[dict]:
    """The parameters each numbered "Try this" item of notebook ``name`` names, in order."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Try this"))
    items = re.split(r"\n(?=\d+\. )", text.split("### Questions")[0])[1:]
    return [{k: ast.literal_eval(v) for k, v in ASSIGNMENT.findall(item)} for item in items]


PROMPTS = [(name, i + 1, p) for name in NOTEBOOKS for i, p in enumerate(prompts(name))]


def test_every_prompt_names_parameters_the_notebook_declares_in_a_form_papermill_takes():
    assert {name for name, _, _ in PROMPTS} == set(NOTEBOOKS)  # every notebook has prompts
    for name, number, parameters in PROMPTS:
        assert parameters, f"{name} Try this {number}: names no `parameter = value`"
        names = pipeline.notebook_parameters(name)
        assert set(parameters) <= names, f"{name} Try this {number}: {set(parameters) - names} not declared"
        json.dumps(parameters)  # what papermill's -y takes


def outputs_text(path: Path) -> str:
    """Everything an executed notebook shows as text: streams, plain text and Markdown outputs."""
    texts = []
    for c in nbformat.read(path, as_version=4).cells:
        for o in c.get("outputs", []):
            texts.append(o.get("text", ""))
            data = o.get("data", {})
            texts += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(texts)


# The smoke preset with the demo's temperature and BatchNorm, so that the prompts that set PiCIE's (T = 1,
# bn_eval: running, the paper's defaults) change something a check can see.
TEST_PRESET = {"temperature": 0.5, "bn_eval": "batch"}


class Runner:
    """Runs notebooks into a tmp folder with the test preset; ``base`` is the out_dir a prompt uses unless it
    names its own."""

    def __init__(self, root: Path):
        self.root, self.base, self.count = root, root / "base", 0
        self.preset = root / "test.yaml"
        smoke = (NOTEBOOK_DIR.parent / "picie_lib" / "presets" / "smoke.yaml").read_text()
        self.preset.write_text(smoke + "".join(f"\n{k}: {v}" for k, v in TEST_PRESET.items()) + "\n")

    def __call__(self, name: str, parameters: dict, out: Path | None = None) -> tuple[str, Path]:
        given = {k: str(self.root / Path(v).name) if k in FOLDERS else v for k, v in parameters.items()}
        given.setdefault("out_dir", str(out or self.base))
        given.setdefault("preset", str(self.preset))
        self.count += 1
        executed = self.root / "executed" / f"{self.count:02d}-{name}.ipynb"
        self.executed = executed
        pipeline.execute(name, executed, given)
        return outputs_text(executed), Path(given["out_dir"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    runner = Runner(tmp_path_factory.mktemp("try_this"))
    runner("07_compare", {})  # the base: every method trained and scored, as `run` leaves it
    return runner


@pytest.fixture(scope="module")
def baseline(run):
    """Each notebook run once with its defaults into the base folder (text, and a copy of its figures)."""
    seen = {}

    def of(name: str) -> tuple[str, Path, Path]:
        if name not in seen:
            text, out = run(name, {})
            figures = run.root / f"figures-{name}"
            shutil.copytree(out / "figures", figures, dirs_exist_ok=True)
            seen[name] = (text, figures, run.executed)
        return seen[name]

    return of


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(start))


def check_00(number, text, out, baseline, run):
    if number == 1:
        assert "data set cocostuff27" in text and "missing" in text and "data/cocostuff" in text
    else:
        assert "cpu / torch" in text and "cpu / torch" not in baseline("00_setup")[0]


def check_01(number, text, out, baseline, run):
    if number == 1:
        assert _line(text, "thing pixels (%)") != _line(baseline("01_data")[0], "thing pixels (%)")
    elif number == 2:
        before = (baseline("01_data")[1] / "01_samples.png").read_bytes()
        assert (out / "figures" / "01_samples.png").read_bytes() != before


def check_02(number, text, out, baseline, run):
    crops = r"\((0\.\d+|1\.0), (0\.\d+|1\.0), (0\.\d+|1\.0)\)"
    sides = [float(s) for *_, s in re.findall(crops, text)]
    before = baseline("02_views")[0]
    if number == 1:
        assert sides and min(sides) >= 0.9 > min(float(s) for *_, s in re.findall(crops, before))
    elif number == 2:
        assert sides != [float(s) for *_, s in re.findall(crops, before)]
    else:
        assert "trained (focal)" in text


def check_03(number, text, out, baseline, run):
    if number == 1:  # class 0 keeps cluster 1 (90 > 80); class 1 takes cluster 0: 155 of 300 pixels matched
        assert "class -> cluster: {0: 1, 1: 0, 2: 2}" in text and "accuracy 51.7%" in text
    elif number == 2:
        assert all(metrics(out / f"{m}-seed0")["config"]["kmeans_iters"] == 2 for m in ("rgb_kmeans", "untrained"))
    else:
        assert metrics(out / "untrained-seed1")["seed"] == 1


def check_04(number, text, out, baseline, run):
    if number == 1:
        assert "this run's T = 1 " in text and "PiCIE's setting" in text
    elif number == 2:
        assert "(1 - p_t)^5: a pixel at p_t = 0.9 counts 1e-05 as much" in text
    else:
        assert "lies below CE (dashed)" in text and "below CE everywhere plotted" in text and "lies above" not in text


def check_05(number, text, out, baseline, run):
    folder = run.root / {1: "ib_focal-switch2", 2: "focal-T1", 3: "ce-12epochs", 4: "ib_focal-literal"}[number]
    summary, config = (json.loads((folder / f).read_text()) for f in ("summary.json", "config.json"))
    if number == 4:  # the literal schedule beside the base run's IB-Focal, both scored
        assert (config["ib_lr_factor"], config["ib_reset_optimizer"]) == (0.01, False)
        assert "ib_focal-seed0 (beside it)" in text and "IB epoch / CE epoch" in text
        literal, default = (metrics(f) for f in (folder, run.base / "ib_focal-seed0"))
        assert "at_switch" in literal and "at_switch" in default
        assert f"{literal['scores']['acc_all']:.2f}" in text and f"{default['scores']['acc_all']:.2f}" in text
    elif number == 1:
        assert (config["loss"], config["switch"], summary["switch_epoch"]) == ("ib_focal", 2, 3)
    elif number == 2:
        assert (config["loss"], config["temperature"]) == ("focal", 1.0)
    else:
        assert summary["epochs"] == 12 and config["epochs_ce"] == 12


def check_06(number, text, out, baseline, run):
    if number == 1:
        assert "Method 1: Focal: All Acc" in text and "PiCIE (CE): All Acc" not in text
    elif number in (2, 3):
        scored = metrics(out / "ce-seed0")
        trained = json.loads((out / "ce-seed0" / "config.json").read_text())
        if number == 2:
            assert scored["config"]["eval_seeds"] == 8 and len(scored["eval_spread"]["seeds"]) == 8
            assert "over 8 k-means seeds" in text and "The run's score is their mean" in text
            assert scored["scores"]["acc_all"] == pytest.approx(np.mean(scored["eval_spread"]["acc_all"]["values"]))
        else:
            assert scored["config"]["eval_kmeans_restarts"] == 5 != trained["eval_kmeans_restarts"]
        assert scored["checkpoint"]["weights_sha256"] == metrics_before_06(run)["checkpoint"]["weights_sha256"]
    elif number == 4:
        folder = run.root / "ce-bn-running"
        assert json.loads((folder / "config.json").read_text())["bn_eval"] == "running"
        assert metrics(folder)["config"]["bn_eval"] == "running"
    else:
        assert "application/vnd.jupyter.widget-view+json" in json.dumps(nbformat.read(last(run), as_version=4).cells)


def check_07(number, text, out, baseline, run):
    rows = json.loads((out / "results.json").read_text())
    if number == 1:
        assert {r["seed"] for r in rows if r["loss"] == "ib_focal"} == {0, 1, 2}
    elif number == 2:
        assert json.loads((out / "focal-seed0" / "config.json").read_text())["temperature"] == 1.0
    else:
        assert next(r for r in rows if r["loss"] == "ib_focal")["switch_epoch"] == 3


CHECKS = {name: globals()[f"check_{name[:2]}"] for name in NOTEBOOKS}
_BEFORE: dict = {}


def metrics_before_06(run) -> dict:
    return _BEFORE.setdefault("ce", metrics(run.base / "ce-seed0"))


def last(run) -> Path:
    return sorted((run.root / "executed").glob("*.ipynb"))[-1]


@pytest.mark.parametrize(("name", "number", "parameters"), PROMPTS, ids=[f"{n}-{i}" for n, i, _ in PROMPTS])
def test_each_prompt_does_what_it_says(name, number, parameters, run, baseline, tmp_path):
    if name == "01_data" and number == 3:
        return _curated(run, parameters)
    if name.startswith("06"):
        metrics_before_06(run)
    if name == "02_views" and number == 3:  # the prompt's command, on the smoke preset
        proc = picie("train", "--preset", "smoke", "--loss", "focal", "--out", str(run.root / "focal"), timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    own = name < "03" or (name == "03_clustering" and number == 1) or name == "04_losses"
    if name == "03_clustering" and number == 2:
        baseline(name)  # rescored where the default references stand
    text, out = run(name, parameters, tmp_path / "out" if own and "out_dir" not in parameters else None)
    CHECKS[name](number, text, out, baseline, run)


def _curated(run, parameters):
    """01's third prompt on a tiny COCO-Stuff layout with curated lists that keep two images of each split."""
    from layouts import write_cocostuff

    root = run.root / "coco"
    layout = write_cocostuff(root)
    for folder, ids in layout.ids.items():
        path = root / "curated" / folder / "Coco164kFull_Stuff_Coarse_7.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids[:2]))
    given = {**parameters, "params": {**parameters["params"], "data_root": str(root)}}
    whole, _ = run("01_data", given, run.root / "coco-whole")
    curated, _ = run("01_data", {**given, "params": {"data_root": str(root)}}, run.root / "coco-curated")
    assert parameters["preset"] == "paper" and parameters["params"] == {"curated": False}
    assert "cocostuff27: 2 training images" in curated
    assert f"cocostuff27: {len(layout.ids['train2017'])} training images" in whole


def test_a_setting_that_changes_training_is_refused_in_a_folder_trained_otherwise(run):
    scored = (run.base / "ce-seed0" / "metrics.json").read_bytes()
    results = (run.base / "results.json").read_bytes()
    with pytest.raises(pipeline.NotebookFailed, match=r"bn_eval: trained with 'batch', now 'running'"):
        run("06_evaluate", {"params": {"bn_eval": "running"}})  # 06's fourth prompt in the run's own folder
    with pytest.raises(pipeline.NotebookFailed, match=r"switch: trained with 'min_loss', now 2"):
        run("07_compare", {"params": {"switch": 2}})
    assert (run.base / "ce-seed0" / "metrics.json").read_bytes() == scored  # nothing rescored under the old weights
    assert (run.base / "results.json").read_bytes() == results


def test_the_notebook_command_passes_a_dict_and_runs_a_quiet_kernel(tmp_path):
    out = tmp_path / "04.ipynb"
    args = ("notebook", "04_losses", str(out), "-p", "params={ib_alpha: 1}", "-p", f"out_dir={tmp_path / 'o'}")
    proc = picie(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lies below CE (dashed)" in outputs_text(out) and out.with_suffix(".html").is_file()
    assert "TCP" not in proc.stderr + proc.stdout and (tmp_path / "o" / "figures" / "04_losses.png").is_file()
    proc = picie("notebook", "04_losses", str(tmp_path / "x.ipynb"), "-p", "alpha=1", timeout=600)
    unknown = "-p alpha: not in 04_losses's parameters cell; known keys: interactive, "
    assert proc.returncode == 2 and unknown in proc.stderr  # refused before a kernel starts


def test_a_finished_run_opens_with_its_own_parameters_from_one_environment_variable(tmp_path, monkeypatch):
    from picie_lib.config import load_preset, save_config
    from picie_lib.notebook import notebook_config

    demo = load_preset("demo")
    save_config(demo, tmp_path / "config.json")
    assert notebook_config(None, {}, None, tmp_path) == demo  # the first folder that holds a config.json
    assert notebook_config(None, {"temperature": 1.0}, tmp_path).temperature == 1.0
    assert notebook_config("smoke", {}, tmp_path).n_train == load_preset("smoke").n_train  # a named preset wins
    assert notebook_config(None, {}, tmp_path / "none").n_train == load_preset("smoke").n_train
    monkeypatch.setenv("PICIE_NOTEBOOK_OUT", str(tmp_path))  # what `make lab RUN=DIR` sets
    assert notebook_config(None, {}, tmp_path / "fresh") == demo  # a prompt's fresh out_dir keeps the run's parameters
    out = tmp_path / "00.ipynb"
    pipeline.execute("00_setup", out, {})
    from picie_lib.config import Config

    changed = sum(v != Config().to_dict()[k] for k, v in demo.to_dict().items())  # the demo's, not the smoke's
    assert f"The run saved in `{tmp_path / 'config.json'}` changes {changed} of the paper's parameters" in outputs_text(
        out
    )


def test_lab_opens_working_copies_and_its_saves_never_reach_the_tracked_notebooks(tmp_path):
    """`make lab RUN=DIR` opens copies of the run's executed notebooks in DIR/lab, `make lab` a scratch copy; a
    save through JupyterLab's own file API (its contents manager, rooted where `lab` roots it: what autosave calls)
    writes the copy, cannot reach the tracked notebooks, and keeps a copy the student changed on the next start."""
    import os
    import subprocess

    from jupyter_server.services.contents.filemanager import FileContentsManager
    from tornado.web import HTTPError

    from picie_lib.config import load_preset, save_config
    from picie_lib.lab import lab_command, working_copy

    tracked = {p: p.read_bytes() for p in NOTEBOOK_DIR.iterdir() if p.is_file()}
    run = tmp_path / "demo-run"
    (run / "notebooks").mkdir(parents=True)
    save_config(load_preset("smoke"), run / "config.json")
    executed = nbformat.read(NOTEBOOK_DIR / "06_evaluate.ipynb", as_version=4)
    executed.cells[0].source += "\n\nexecuted"
    nbformat.write(executed, run / "notebooks" / "06_evaluate-ce-seed0.ipynb")
    folder = working_copy(run)
    assert folder == run / "lab" and [p.name for p in folder.glob("*.ipynb")] == ["06_evaluate-ce-seed0.ipynb"]
    scratch = working_copy(None, tmp_path / "scratch")
    assert sorted(p.name for p in scratch.glob("*.ipynb")) == sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
    command = lab_command(folder, root=True)
    assert f"--ServerApp.root_dir={folder.resolve()}" in command and command[-1] == "--allow-root"

    contents = FileContentsManager(root_dir=str(folder))  # what JupyterLab's server saves through
    model = contents.get("06_evaluate-ce-seed0.ipynb")
    model["content"].cells[1].source += "\nparams = {'eval_seeds': 8}  # a student's edit"
    contents.save(model, "06_evaluate-ce-seed0.ipynb")
    for outside in ("../../../notebooks/06_evaluate.ipynb", str(NOTEBOOK_DIR / "06_evaluate.ipynb")):
        with pytest.raises(HTTPError):
            contents.save(model, outside)
    assert "a student's edit" in (folder / "06_evaluate-ce-seed0.ipynb").read_text()
    working_copy(run)  # the next start keeps the student's copy
    assert "a student's edit" in (folder / "06_evaluate-ce-seed0.ipynb").read_text()
    assert {p: p.read_bytes() for p in NOTEBOOK_DIR.iterdir() if p.is_file()} == tracked
    repo = NOTEBOOK_DIR.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under `make test`
    shown = subprocess.run(["make", "--no-print-directory", "-n", "lab", f"RUN={run}"], cwd=repo, capture_output=True,
                           text=True, env=env).stdout  # fmt: skip
    assert f"-m picie_lib lab {run}" in shown


def test_a_try_on_a_finished_run_writes_beside_it(run, tmp_path):
    """A "Try this" in a finished run's folder (its config.json there, as `run` leaves it): 06 re-scores into
    tries/eval_seeds=2, reusing the draws the run kept; 04's figure goes there too; the run's files stay."""
    from picie_lib.config import load_preset, save_config

    finished = tmp_path / "finished"
    shutil.copytree(run.base, finished)
    save_config(load_preset(str(run.preset)), finished / "config.json")
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    text, _ = run("06_evaluate", {"params": {"eval_seeds": 2}}, finished)
    scored = metrics(finished / "tries" / "eval_seeds=2" / "ce-seed0")
    assert len(scored["eval_spread"]["seeds"]) == 2 and scored["draws_reused"] == 1 and "a try on" in text
    assert (finished / "tries" / "eval_seeds=2" / "ce-seed0" / "figures" / "per_class_iou.png").is_file()
    run("04_losses", {"params": {"ib_alpha": 1}}, finished)
    assert (finished / "tries" / "ib_alpha=1" / "figures" / "04_losses.png").is_file()
    assert {p: p.read_bytes() for p in before} == before  # the run's scores, figures and report as they were


def test_tables_show_whole_in_the_executed_notebooks(baseline):
    from picie_lib.config import load_preset
    from picie_lib.data import build_dataset

    for name in ("00_setup", "01_data"):
        html = [
            o["data"]["text/html"]
            for c in nbformat.read(baseline(name)[2], as_version=4).cells
            for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})
        ]
        assert html and not any("...</td>" in h or "<td>...</td>" in h or "<th>...</th>" in h for h in html), name
    classes = build_dataset(load_preset("smoke"), "train", mode="eval").class_names
    shown = outputs_text(baseline("01_data")[2])
    assert all(f"{c}: {n}" in shown for c, n in enumerate(classes))


def test_a_relative_file_parameter_is_the_same_run_as_its_absolute_path(tmp_path):
    from picie_lib.checkpoints import evaluation_asked
    from picie_lib.config import load_preset, save_config
    from picie_lib.notebook import notebook_config

    trained = load_preset("smoke", class_table="tables/t.yaml")  # as `train` saves it: relative to the root
    asked = trained.replace(class_table=str(NOTEBOOK_DIR.parent / "tables" / "t.yaml"), eval_seeds=3)
    assert evaluation_asked(tmp_path, trained, asked) == {"eval_seeds": 3}
    with pytest.raises(ValueError, match="class_table: trained with"):
        evaluation_asked(tmp_path, trained, asked.replace(class_table="/elsewhere/t.yaml"))
    save_config(trained, tmp_path / "config.json")
    assert notebook_config(None, {}, tmp_path).class_table == asked.class_table  # read from the root, not notebooks/
