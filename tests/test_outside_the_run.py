"""Nothing outside a run is touched, whatever links, names or images say (docs/faults.md). Each test is one of the
reproductions a hostile trial found: it gets a one-line refusal naming the file or parameter, or the correct
result, and every file outside the run's own is checked by hash before and after."""

import hashlib
import io
import json
import os
import shutil
import time
import zlib
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from picie_lib.checkpoints import load_checkpoint
from picie_lib.cli import main, what_was_saved
from picie_lib.data.base import BadFile
from picie_lib.data.images import MAX_PIXELS, decode_images, read_bytes, read_image
from picie_lib.notebook import NOTEBOOK_DIR
from picie_lib.run_folder import LOCK_NAME, MANIFEST_LIMIT, MANIFEST_NAME, clear_run, exclusive, manifest_entries
from picie_lib.transforms import center_crop_label, center_crop_resize, square_base

# slow: trains and runs commands, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow

ONE_EPOCH = ["train", "--preset", "smoke", "--loss", "ce", "--epochs", "1"]


def hashes(folder: Path, leave_out: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` but those under ``leave_out`` (the run's own); a link by its target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if leave_out is not None and (path == leave_out or leave_out in path.parents):
            continue
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("PICIE_PROGRESS", "0")  # the commands run in this process: their bars off, as in a log


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main([*ONE_EPOCH, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(tmp_path, trained) -> Path:
    shutil.copytree(trained, tmp_path / "r", symlinks=True)
    return tmp_path / "r"


# ---- 1. no unlink through a link -------------------------------------------------------------------------
def test_overwrite_removes_nothing_through_a_figures_folder_that_is_a_link(tmp_path, run):
    outside = tmp_path / "o"
    outside.mkdir()
    for name in ("confusion.png", "per_class_iou.png", ".x.tmp", "mine.png"):
        (outside / name).write_text(name)
    (run / "figures").symlink_to(outside)
    before = hashes(tmp_path, leave_out=run)
    assert main([*ONE_EPOCH, "--out", str(run), "--overwrite"]) == 0
    assert hashes(tmp_path, leave_out=run) == before and len(list(outside.iterdir())) == 4


# ---- 2. the notebook command writes over its own files only --------------------------------------------------
def test_the_notebook_command_refuses_a_file_it_did_not_write(tmp_path, capsys):
    notes = tmp_path / "v.txt"
    notes.write_text("notes\n")
    (tmp_path / "v.html").write_text("<p>mine</p>")
    tracked = NOTEBOOK_DIR / "04_losses.ipynb"
    before, tracked_before = hashes(tmp_path), tracked.read_bytes()
    for output in (notes, tracked):
        assert main(["notebook", "04_losses", str(output), "-p", f"out_dir={tmp_path / 'nb'}"]) == 2
        assert (
            one_line(capsys)
            == f"error: {output} exists and no picie_lib run wrote it; choose another path, or move it away"
        )
    assert hashes(tmp_path) == before and tracked.read_bytes() == tracked_before
    out = tmp_path / "mine" / "04.ipynb"  # a folder of its own: the command's, and running it again rewrites it
    for _ in range(2):
        assert main(["notebook", "04_losses", str(out), "-p", f"out_dir={tmp_path / 'nb'}"]) == 0
    assert out.is_file() and out.with_suffix(".html").is_file() and not list(out.parent.glob(".*.tmp"))


# ---- 3. pretext --out writes only its own backbone, under the folder's lock -----------------------------------
def test_pretext_refuses_a_file_that_is_not_its_backbone(tmp_path, run, capsys):
    before = hashes(tmp_path)
    assert main(["pretext", "--out", str(run / "checkpoint.pt"), "--images", "8", "--epochs", "1"]) == 2
    assert one_line(capsys).startswith(f"error: {run / 'checkpoint.pt'} exists and is not a pretext backbone")
    assert hashes(tmp_path) == before
    with exclusive(run):  # the folder held by another job: refused with its holder, nothing trained
        assert main(["pretext", "--out", str(run / "backbone.pt"), "--images", "8", "--epochs", "1"]) == 2
    assert "is in use by PID" in one_line(capsys) and not (run / "backbone.pt").exists()


# ---- 4. one small image cannot exhaust memory ------------------------------------------------------------------
def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (its CRC kept valid)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_an_extreme_aspect_ratio_costs_what_its_output_does(monkeypatch):
    from picie_lib import transforms

    image = torch.randint(0, 256, (3, 1, 20000), dtype=torch.uint8)  # 143 bytes as a PNG; resized first: 24.6 GB
    start = time.perf_counter()
    assert square_base(image, 640).shape == (3, 640, 640)
    crop, label = center_crop_resize(image, torch.zeros(1, 20000, dtype=torch.int64), 320)
    assert crop.shape == (3, 320, 320) and label.shape == (320, 320) and time.perf_counter() - start < 5
    within = torch.randint(0, 256, (3, 10, 40), dtype=torch.uint8)  # 4:1, the limit: left as it is
    assert transforms.cap_aspect(within) is within
    beyond = torch.arange(410).reshape(10, 41)  # 4.1:1: its centre 40 columns
    assert torch.equal(transforms.cap_aspect(beyond), beyond[:, :40])
    wide = torch.linspace(0, 255, 300).round().to(torch.uint8).expand(3, 30, 300).contiguous()  # 10:1, a gradient
    capped = square_base(wide, 64).float()
    monkeypatch.setattr(transforms, "ASPECT_LIMIT", 10**9)  # the uncut reference: its centre is the same
    assert (capped - square_base(wide, 64).float()).abs().mean() < 2.0
    labels = torch.arange(20 * 100).reshape(20, 100)
    assert torch.equal(center_crop_label(labels, 16), center_crop_label(labels[:, 10:90], 16))


def test_an_image_over_the_pixel_limit_is_refused_by_every_decoder_and_named(tmp_path):
    big_png, big_jpeg = tmp_path / "big.png", tmp_path / "big.jpg"
    big_png.write_bytes(_png_declaring(20000, 20000))
    big_jpeg.write_bytes(_jpeg_declaring(65535, 65535))
    limit = f"over the limit of {MAX_PIXELS:,}"
    with pytest.raises(BadFile, match=rf"{big_png}: 400,000,000 pixels, {limit}"):
        read_image(big_png)
    just_over = tmp_path / "over.png"  # over the limit, under PIL's own refusal at twice it: ours refuses it
    just_over.write_bytes(_png_declaring(10000, 9000))
    with pytest.raises(BadFile, match=rf"{just_over}: 10000x9000 = 90,000,000 pixels, {limit}"):
        read_image(just_over)
    (refused,) = decode_images([read_bytes(big_jpeg)], [big_jpeg], "cpu")
    assert isinstance(refused, BadFile) and str(refused).startswith(f"{big_jpeg}: 65535x65535 = 4,294,836,225 pixels")


# ---- 5. a zero-byte image is a bad file, named --------------------------------------------------------------
def test_an_empty_image_file_is_named_in_train_evaluate_and_prepare(tmp_path, capsys):
    from layouts import write_cocostuff

    from picie_lib.data.base import BadFileWarning

    layout = write_cocostuff(tmp_path / "coco")
    empty = layout.root / "images" / "train2017" / f"{layout.ids['train2017'][0]}.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadFile, match=rf"{empty}: an empty file \(0 bytes\)"):
        read_bytes(empty)
    params = ["-p", "dataset=cocostuff27", "-p", f"data_root={layout.root}", "-p", "curated=false", "-p", "base_res=96"]
    with pytest.warns(BadFileWarning, match=empty.name):
        assert main([*ONE_EPOCH, *params, "--out", str(tmp_path / "r")]) == 0
    with pytest.warns(BadFileWarning, match=empty.name):
        assert main(["evaluate", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["prepare", "cocostuff", str(layout.root), "--verify"]) == 2
    assert f"{empty}: an empty file (0 bytes); expected an image file" in capsys.readouterr().out


# ---- 6. no write into a file that has other names ---------------------------------------------------------------
def test_a_hard_link_in_a_run_folder_is_refused_and_its_other_name_untouched(tmp_path, run, capsys):
    notes, precious = tmp_path / "notes.txt", tmp_path / "precious.txt"
    notes.write_text("my notes\n")
    precious.write_text("precious\n")
    (run / MANIFEST_NAME).unlink()
    os.link(notes, run / MANIFEST_NAME)
    before = hashes(tmp_path, leave_out=run)
    assert main([*ONE_EPOCH, "--out", str(run), "--overwrite"]) == 1
    hard_link = "is a hard link: writing it would change the file behind its other names; remove it"
    assert one_line(capsys) == f"error: {run / MANIFEST_NAME} {hard_link}"
    (run / MANIFEST_NAME).unlink()
    shutil.copy(notes, run / MANIFEST_NAME)  # a manifest again, then the lock as a hard link
    (run / LOCK_NAME).unlink()
    os.link(precious, run / LOCK_NAME)
    assert main(["evaluate", str(run)]) == 1
    assert "is a hard link" in one_line(capsys)
    assert hashes(tmp_path, leave_out=run) == before


# ---- 7. the manifest cannot name the lock or anything outside the folder ---------------------------------------
def test_a_hand_edited_manifest_names_nothing_outside_the_run_nor_its_lock(tmp_path, run):
    (run / "kept.txt").write_text("mine")
    weird = [".", LOCK_NAME, MANIFEST_NAME, "../x", "/etc/passwd", "a\x00b", "a\nb", "\udcff"]
    with open(run / MANIFEST_NAME, "ab") as fh:
        fh.write("\n".join(weird).encode(errors="surrogateescape") + b"\n" + bytes(range(1, 32)) + b"\n")
    entries = manifest_entries(run)
    assert not {".", LOCK_NAME, MANIFEST_NAME} & set(entries) and all(
        "\x00" not in e and ".." not in e for e in entries
    )
    with exclusive(run):  # another job holds the folder: clearing it must keep the lock it holds
        clear_run(run)
        assert (run / LOCK_NAME).is_file() and (run / "kept.txt").is_file()
    (run / MANIFEST_NAME).write_text("".join(f"file{i}.txt\n" for i in range(40_000)))
    start = time.perf_counter()
    assert len(manifest_entries(run)) == 40_000 and time.perf_counter() - start < 2
    (run / MANIFEST_NAME).write_bytes(b"x" * (MANIFEST_LIMIT + 1))
    with pytest.raises(ValueError, match=rf"{run / MANIFEST_NAME}: {MANIFEST_LIMIT + 1} bytes"):
        manifest_entries(run)


# ---- 8. malformed run files: one line naming the file and the field -------------------------------------------
def _edit_checkpoint(run: Path, **changes) -> None:
    ckpt = load_checkpoint(run / "checkpoint.pt")
    for key, change in changes.items():
        ckpt[key] = change(ckpt[key])
    torch.save(ckpt, run / "checkpoint.pt")


def test_malformed_run_files_are_named_with_their_field(tmp_path, trained, run, capsys):
    _edit_checkpoint(run, history=lambda h: [{k: v for k, v in r.items() if k != "phase"} for r in h])
    assert main(["evaluate", str(run)]) == 2
    assert one_line(capsys) == (
        f"error: {run / 'checkpoint.pt'}: the checkpoint's 'history' record 1 lacks 'phase'; it is damaged or was "
        "edited. Restore it from a copy, or train again with --overwrite"
    )
    again = tmp_path / "again"
    shutil.copytree(trained, again)
    _edit_checkpoint(again, schedule=lambda s: {**s, "best_loss": "2.5"})
    assert main([*ONE_EPOCH[:-1], "2", "--out", str(again), "--resume"]) == 2
    assert "'schedule' has best_loss = '2.5', expected a number" in one_line(capsys)
    assert torch.load(again / "checkpoint.pt", weights_only=True)["epoch"] == 1  # refused before an epoch trained


@pytest.mark.parametrize(
    ("file", "content", "command", "message"),
    [
        ("environment.json", "[null]", [*ONE_EPOCH, "--resume"], "environment.json: expected a list of sessions"),
        ("config.json", "[1, 2]", ["evaluate"], "config.json: expected a mapping of parameter names to values"),
        ("metrics.json", '{"scores": ', ["evaluate"], None),  # rewritten by evaluate: not read
    ],
)
def test_damaged_json_beside_a_run_is_named_by_the_command_that_reads_it(run, capsys, file, content, command, message):
    (run / file).write_text(content)
    code = main([*command, str(run)] if command == ["evaluate"] else [*command, "--out", str(run)])
    if message is None:
        assert code == 0 and json.loads((run / file).read_text())["scores"]
    else:
        assert code == 2 and message in one_line(capsys)


def test_a_comparison_with_a_damaged_metrics_file_names_it(tmp_path, capsys):
    out = tmp_path / "cmp"
    smoke = ["compare", "--preset", "smoke", "--out", str(out), "-p", "epochs_ce=1", "-p", "epochs_focal=1"]
    assert main([*smoke, "-p", "epochs_ib_focal=2", "-p", "probe_epochs=0"]) == 0
    for damaged in ('{"scores": ', "[1, 2]"):
        (out / "ce-seed0" / "metrics.json").write_text(damaged)
        assert main([*smoke, "-p", "epochs_ib_focal=2", "-p", "probe_epochs=0", "--resume"]) == 2
        assert one_line(capsys).startswith(f"error: {out / 'ce-seed0' / 'metrics.json'}: ")


def test_a_synthetic_image_too_small_to_draw_is_refused_before_anything(tmp_path, capsys):
    assert main([*ONE_EPOCH, "-p", "image_size=1", "--out", str(tmp_path / "r")]) == 2
    assert one_line(capsys) == "error: -p image_size=1: expected an integer >= 8" and not (tmp_path / "r").exists()


# ---- 9. the notebook command's parameters are checked before papermill ------------------------------------------
def test_notebook_parameters_are_checked_before_a_kernel_starts(tmp_path, capsys):
    bomb = "params={a: &a [x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a],"
    bomb += " c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c],"
    bomb += " e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d], f: [*e, *e, *e, *e, *e, *e, *e, *e, *e]}"
    out = str(tmp_path / "nb.ipynb")
    start = time.perf_counter()
    assert main(["notebook", "04_losses", out, "-p", bomb]) == 2
    assert "expands to more than 100,000 values" in one_line(capsys) and time.perf_counter() - start < 5
    for given, message in [
        ("params={eval_seed: 8}", "-p params: unknown key(s) eval_seed; did you mean eval_seeds?"),
        ("seed=-1", "-p seed=-1: expected an integer in [0, "),
        ("eval_seeds=8", "-p eval_seeds: not in 04_losses's parameters cell; known keys: "),
        ("preset=nowhere", "--preset 'nowhere': expected one of demo, paper, smoke"),
    ]:
        assert main(["notebook", "04_losses", out, "-p", given]) == 2
        assert message in one_line(capsys)
    assert not Path(out).exists()


def test_an_interrupted_evaluation_says_the_whole_command_again():
    args = Namespace(command="evaluate", run_dir="r", argv=["evaluate", "r", "--eval-seeds", "8", "--restarts", "2"])
    assert what_was_saved(args).endswith("again: python -m picie_lib evaluate r --eval-seeds 8 --restarts 2")


# ---- 10. a folder is resumed only by the kind of command that made it ------------------------------------------
def test_compare_does_not_resume_into_a_training_folder_nor_runtimes_trust_a_table(tmp_path, run, capsys):
    before = hashes(tmp_path)
    assert main(["compare", "--preset", "smoke", "--out", str(run), "-p", "epochs_ce=1", "--resume"]) == 2
    assert one_line(capsys).startswith(f"error: {run} holds one training run (`train --out`)")
    assert hashes(tmp_path) == before
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps(json.loads((run / "config.json").read_text())))
    (fake / "runtimes.json").write_text(json.dumps({"preset": "demo", "overrides": {}, "per_notebook": {}}))
    assert main(["runtimes", str(fake)]) == 2
    assert "ran other parameters than the demo preset's" in one_line(capsys)
    assert np.all([p.is_file() for p in (fake / "config.json", fake / "runtimes.json")])
