"""On-disk data sets (COCO-Stuff-27, Cityscapes-27, a folder) end to end on tiny sets in the real layouts."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from layouts import FOLDER_NAMES, FOLDER_THINGS, write_cityscapes, write_cocostuff, write_folder
from PIL import Image
from torchvision.transforms import InterpolationMode

from picie_lib import loader
from picie_lib.cli import main
from picie_lib.config import Config, load_preset
from picie_lib.data import BadFile, Cityscapes27, CocoStuff27, FolderDataset, build_dataset
from picie_lib.data.base import BadFileWarning
from picie_lib.data.cocostuff_classes import COARSE_NAMES, FINE_NAMES, FINE_TO_COARSE, STUFF_CLASSES, THING_CLASSES
from picie_lib.data.images import decode_images, read_bytes, read_image
from picie_lib.transforms import draw_view_params, square_base

# pycocotools 2.0 with numpy 2 warns inside its own mask decoding
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

AUTHORS_TABLE = Path(__file__).parents[2] / "shared/data/picie_fine_to_coarse.json"
# cocostuff27.md, "Coarse classes": fine classes per coarse class 0..26
FINE_PER_COARSE = [6, 6, 10, 10, 8, 8, 8, 10, 6, 1, 10, 8, 2, 6, 4, 11, 4, 11, 7, 2, 6, 11, 9, 2, 6, 5, 5]
COARSE = {**dict(enumerate(FINE_TO_COARSE)), 255: -1}


def eval_reference(image_path: Path, fine: np.ndarray, res: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL alone: shorter side to ``res`` (bilinear image, nearest label), centre crop, then the table."""
    img = Image.open(image_path).convert("RGB")
    w, h = img.size
    new_w, new_h = max(res, round(w * res / min(w, h))), max(res, round(h * res / min(w, h)))
    img = np.asarray(img.resize((new_w, new_h), Image.BILINEAR), dtype=np.float64).transpose(2, 0, 1)
    lab = np.asarray(Image.fromarray(fine).resize((new_w, new_h), Image.NEAREST))
    top, left = (new_h - res) // 2, (new_w - res) // 2
    crop = (slice(top, top + res), slice(left, left + res))
    return img[:, crop[0], crop[1]], np.vectorize(COARSE.get)(lab[crop])


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The PNG layout without curated lists (built by the rule on first use)."""
    return write_cocostuff(tmp_path_factory.mktemp("coco") / "cocostuff")


# ---- the table ------------------------------------------------------------------------------------------
def test_fine_to_coarse_is_the_authors_table():
    if not AUTHORS_TABLE.is_file():
        pytest.skip(f"{AUTHORS_TABLE} absent")
    published = json.loads(AUTHORS_TABLE.read_text())
    assert {int(k): v for k, v in published["fine_index_to_coarse_index"].items()} == dict(enumerate(FINE_TO_COARSE))
    names = {FINE_NAMES[f]: COARSE_NAMES[c] for f, c in enumerate(FINE_TO_COARSE)}
    assert names == published["fine_name_to_coarse_name"]


def test_fine_to_coarse_structure():
    assert len(FINE_TO_COARSE) == len(FINE_NAMES) == 182 and len(COARSE_NAMES) == 27
    assert set(FINE_TO_COARSE[:91]) == set(THING_CLASSES) == set(range(12))
    assert set(FINE_TO_COARSE[91:]) == set(STUFF_CLASSES) == set(range(12, 27))
    assert np.bincount(FINE_TO_COARSE, minlength=27).tolist() == FINE_PER_COARSE
    assert all(n.endswith("-things") for n in COARSE_NAMES[:12]) and all(
        n.endswith("-stuff") for n in COARSE_NAMES[12:]
    )
    assert (FINE_NAMES[0], FINE_TO_COARSE[0], FINE_NAMES[181], FINE_TO_COARSE[181]) == ("person", 9, "wood", 24)


# ---- COCO-Stuff-27 ----------------------------------------------------------------------------------------
def test_coco_eval_items_equal_an_independent_computation(coco):
    ds = CocoStuff27(coco.root, "train", "eval", res=320, curated=False)
    assert ds.ids == coco.ids["train2017"]  # every image, sorted: RGB, grayscale, CMYK, smaller than the crop
    for i, stem in enumerate(ds.ids):
        index, image, label = ds[i]
        ref_image, ref_label = eval_reference(ds.image_path(i), coco.fine["train2017"][stem], 320)
        assert index == i and image.shape == (3, 320, 320) and label.dtype == torch.int64
        assert np.array_equal(label.numpy(), ref_label), stem
        assert image.dtype == torch.uint8  # PIL's resize, as the reference: within 2 grey levels, mostly equal
        diff = np.abs(image.numpy().astype(np.float64) - ref_image)
        assert diff.max() <= 2 and diff.mean() < 0.1 and (diff > 1).mean() < 1e-4, stem
    scene_labels = [ds[i][2] for i in range(len(ds))]
    assert any((lab == -1).any() for lab in scene_labels)  # unlabeled (255) -> ignore


def test_coco_train_items_are_two_views_of_the_square_base(coco):
    ds = CocoStuff27(coco.root, "train", "train", res=64, base_res=96, curated=False)
    for i in range(len(ds)):
        base, label = ds.load(i)
        pil = Image.open(ds.image_path(i)).convert("RGB")
        ref = TF.center_crop(TF.resize(pil, 96, InterpolationMode.BILINEAR), 96)  # PiCIE's BaseTransform(res2)
        assert label is None and base.shape == (3, 96, 96)
        assert (base.int() - TF.pil_to_tensor(ref).int()).abs().max() <= 1  # the tensor resize: PIL's within 1
    ds.set_view_params(draw_view_params(len(ds), Config(), torch.Generator().manual_seed(0)))
    index, views = ds[2]
    assert index == 2 and views.shape == (2, 3, 64, 64) and views.dtype == torch.uint8 and ds.base_size == 96


def test_coco_curated_list_built_by_the_rule(tmp_path, capsys):
    coco = write_cocostuff(tmp_path / "r")
    ds = CocoStuff27(coco.root, "val", "eval", res=64)
    # the rule: both sides >= 360 and >= 75% of all pixels (unlabeled included) are stuff
    ref = [
        i
        for i, fine in coco.fine["val2017"].items()
        if min(fine.shape) >= 360 and ((fine >= 91) & (fine <= 181)).sum() >= 0.75 * fine.size
    ]
    assert ds.ids == ref == coco.curated("val2017")
    path = coco.root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    assert path.read_text() == "".join(f"{i}\n" for i in ref)
    assert "2 of 4 images; built by the rule, not the official list" in capsys.readouterr().out
    train = CocoStuff27(coco.root, "train", "train", res=64, base_res=96)
    assert train.ids == coco.curated("train2017")  # leaves out the image with 81% of labelled, 68% of all pixels
    CocoStuff27(coco.root, "val", "eval")  # the list is written: read, not built again
    assert capsys.readouterr().out.count("built by the rule") == 1


def test_coco_official_curated_list_is_read(tmp_path, capsys):
    chosen = {"train2017": ["000000000156", "000000000139"], "val2017": ["000000001156"]}
    layout = write_cocostuff(tmp_path / "c", curated_lists=chosen)
    assert CocoStuff27(layout.root, "train", "train").ids == chosen["train2017"]  # as listed, not re-curated
    assert CocoStuff27(layout.root, "val", "eval").ids == chosen["val2017"]
    assert CocoStuff27(layout.root, "val", "eval", max_images=1, curated=False).ids == layout.ids["val2017"][:1]
    assert "built" not in capsys.readouterr().out


def test_coco_json_labels_equal_the_png_labels(coco, tmp_path, capsys):
    layout = write_cocostuff(tmp_path / "j", source="json")
    assert not (layout.root / "annotations" / "val2017").exists()
    ds = CocoStuff27(layout.root, "val", "eval", res=320, curated=False)
    assert "from the COCO JSON" in capsys.readouterr().out
    png = CocoStuff27(coco.root, "val", "eval", res=320, curated=False)
    for i in range(len(ds)):
        assert torch.equal(ds[i][2], png[i][2])
    CocoStuff27(layout.root, "val", "eval", curated=False)  # the PNGs are cached: nothing drawn again
    assert "from the COCO JSON" not in capsys.readouterr().out
    # the curated rule works from the drawn maps too (train: drawn on first use, for every image)
    assert CocoStuff27(layout.root, "train", "train").ids == coco.curated("train2017")
    for folder in ("train2017", "val2017"):  # things over stuff, a small thing over a larger one, 'other' no label
        for stem, fine in coco.fine[folder].items():
            drawn = np.asarray(Image.open(layout.root / "annotations" / folder / f"{stem}.png"))
            assert np.array_equal(drawn, fine), (folder, stem)


def test_coco_missing_and_bad_files_are_named(tmp_path):
    layout = write_cocostuff(tmp_path / "b", curated_lists={"val2017": ["000000001139", "000000001156"]})
    root, stem = layout.root, "000000001156"
    label = root / "annotations" / "val2017" / f"{stem}.png"
    label.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{stem}\.png: missing.*stuffthingmaps_trainval2017\.zip"):
        CocoStuff27(root, "val", "eval")
    assert len(CocoStuff27(root, "val", "train")) == 2  # training never reads labels

    Image.fromarray(np.full((500, 375), 200, np.uint8)).save(label)  # a value outside 0..181 and 255
    ds = CocoStuff27(root, "val", "eval")
    with pytest.raises(BadFile, match=rf"{stem}\.png: label values \{{200\}} outside 0\.\.181 and 255"):
        ds.load(1)
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(label)
    with pytest.raises(BadFile, match=r"a label map of 50x50 for the 375x500 image"):
        ds.load(1)
    Image.fromarray(np.zeros((500, 375, 3), np.uint8)).save(label)
    with pytest.raises(BadFile, match=r"mode RGB.*expected a single-channel PNG"):
        ds.load(1)

    image = root / "images" / "val2017" / f"{stem}.jpg"
    image.write_bytes(image.read_bytes()[:2000])  # truncated
    with pytest.raises(BadFile, match=rf"{stem}\.jpg: unreadable"):
        ds.load(1)
    image.write_bytes(b"not an image")
    with pytest.raises(BadFile, match=rf"{stem}\.jpg: unreadable"):
        CocoStuff27(root, "val", "train", base_res=64).load(1)
    image.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{stem}\.jpg: missing \(1 of the 2 listed.*val2017\.zip"):
        CocoStuff27(root, "val", "train")

    (root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"Coco164kFull_Stuff_Coarse_7\.txt: empty"):
        CocoStuff27(root, "val", "train")
    shutil.rmtree(root / "images" / "val2017")
    with pytest.raises(FileNotFoundError, match=r"images/val2017: no such folder.*val2017\.zip"):
        CocoStuff27(root, "val", "train")
    with pytest.raises(ValueError, match="split='test'"):
        CocoStuff27(root, "test", "train")


def test_images_of_any_mode_read_as_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    cases = {
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full((20, 30), 7, np.uint8)])), rgb),
        "grey.png": (Image.fromarray(rgb[..., 0]), np.repeat(rgb[..., :1], 3, 2)),
        "grey16.png": (Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), np.repeat(rgb[..., :1], 3, 2)),
        "palette.png": (Image.fromarray(rgb).quantize(16), None),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
    }
    for name, (img, expected) in cases.items():
        img.save(tmp_path / name)
        out = read_image(tmp_path / name)
        assert out.shape == (3, 20, 30) and out.dtype == torch.uint8, name
        if expected is not None:
            assert np.array_equal(out.permute(1, 2, 0).numpy(), expected), name
    assert read_image(tmp_path / "rgba.png", base=16).shape == (3, 16, 16)


@pytest.mark.parametrize("size", [(97, 100), (100, 103), (61, 50), (640, 480), (333, 500), (64, 64), (30, 41)])
def test_square_base_is_picies_base_transform(size):
    """The base from a uint8 tensor: PiCIE's PIL resize and centre crop within one grey level (random pixels,
    so a crop one pixel off or another filter would differ by far more)."""
    pil = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    ref = TF.pil_to_tensor(TF.center_crop(TF.resize(pil, 64, InterpolationMode.BILINEAR), 64))  # as PiCIE
    base = square_base(TF.pil_to_tensor(pil), 64)
    assert base.shape == (3, 64, 64) and (base.int() - ref.int()).abs().max() <= 1


def test_decoded_bytes_are_read_images_pixels_and_bad_files_are_named(tmp_path):
    """``decode_images`` (what the training passes decode) gives ``read_image``'s pixels exactly, for JPEGs
    (torchvision) and for anything else (PIL), and a BadFile naming a truncated or garbage file."""
    rng = np.random.default_rng(2)
    rgb = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize((60, 40)))
    images = {
        "rgb.jpg": Image.fromarray(rgb),
        "grey.jpg": Image.fromarray(rgb[..., 0]),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "grey16.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette.png": Image.fromarray(rgb).quantize(16),
    }
    paths = []
    for name, img in images.items():
        img.save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rgb.jpg").read_bytes()[:300])
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    paths += [tmp_path / "cut.jpg", tmp_path / "junk.jpg"]
    decoded = decode_images([read_bytes(p) for p in paths], paths, "cpu")
    for path, image in zip(paths[:5], decoded, strict=False):
        assert torch.equal(image, read_image(path)), path.name
    for path, error in zip(paths[5:], decoded[5:], strict=True):
        assert isinstance(error, BadFile) and error.path == str(path) and "unreadable" in str(error), path.name
        assert "BytesIO" not in str(error)  # PIL read the file by its name: the message names it
    with pytest.raises(BadFile, match=r"unreadable \(IsADirectoryError"):  # there, but not a readable file
        read_bytes(tmp_path)


# ---- prepare --------------------------------------------------------------------------------------------
def test_prepare_names_what_is_missing_and_where_it_comes_from(tmp_path, capsys):
    assert main(["prepare", "cocostuff", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert "images/train2017: no .jpg images; unzip train2017.zip (18 GB)" in captured.out
    assert "stuffthingmaps_trainval2017.zip" in captured.out and "Coco164kFull_Stuff_Coarse_7.txt" in captured.out
    assert "problem(s)" in captured.err
    assert main(["prepare", "cityscapes", str(tmp_path)]) != 0
    assert "leftImg8bit/test: missing" in capsys.readouterr().out
    assert main(["prepare", "folder", str(tmp_path)]) != 0
    assert "images: no .jpg/.jpeg/.png images" in capsys.readouterr().out


def test_prepare_cocostuff_builds_labels_and_lists_and_counts(tmp_path, capsys):
    layout = write_cocostuff(tmp_path / "p", source="json")
    assert main(["prepare", "cocostuff", str(layout.root), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "drew 6 label maps from the COCO JSON" in out and "built by IIC's rule" in out
    assert "train2017: images 6, label maps 6, curated 2" in out and "val2017: images 4, label maps 4, curated 2" in out
    assert "ready: -p dataset=cocostuff27" in out
    (layout.root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("000000001000\n")
    assert main(["prepare", "cocostuff", str(layout.root)]) != 0
    out = capsys.readouterr().out
    assert "curated list of 1 images (not the official 2,175)" in out and "000000001000.jpg: missing" in out


# ---- Cityscapes-27 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("label_root", ["gtFine", "annotations/gtFine"])
def test_cityscapes_splits_and_label_mapping(tmp_path, label_root, capsys):
    layout = write_cityscapes(tmp_path / "city", label_root=label_root)
    val = Cityscapes27(layout.root, "val", "eval", res=32)
    assert [p for _, p in val.items] == layout.images["val"] + layout.images["train"]  # PiCIE: val + train
    for i in range(len(val)):
        image, label = val.load(i)
        raw = layout.label_ids[val.image_path(i)].astype(np.int64)
        assert image.shape == (3, 40, 80)
        assert np.array_equal(label.numpy(), np.where((raw >= 7) & (raw <= 33), raw - 7, -1))  # labelIds 7..33
    assert val[0][2].shape == (32, 32)
    train = Cityscapes27(layout.root, "train", "train", res=32, base_res=40)
    assert [p for _, p in train.items] == layout.images["test"] + layout.images["train_extra"]
    assert train.load(0)[0].shape == (3, 40, 40) and train.load(0)[1] is None
    assert (Cityscapes27(layout.root, "train", "eval", res=32)[0][2] == -1).all()  # no fine labels there
    assert val.class_names[0] == "road" and val.class_names[-1] == "bicycle" and len(val.class_names) == 27
    assert [val.class_names[c] for c in val.thing_classes][:2] == ["person", "rider"] and len(val.stuff_classes) == 17
    assert main(["prepare", "cityscapes", str(layout.root), "--verify"]) == 0
    assert "leftImg8bit/train_extra: images 3" in capsys.readouterr().out


def test_cityscapes_missing_pieces(tmp_path, capsys):
    layout = write_cityscapes(tmp_path / "city")
    gone = layout.root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=r"aachen_000000_000019_gtFine_labelIds\.png: missing.*gtFine_trainval"):
        Cityscapes27(layout.root, "val", "eval")
    shutil.rmtree(layout.root / "leftImg8bit" / "train_extra")
    assert len(Cityscapes27(layout.root, "train", "train")) == 2
    assert "train_extra absent (leftImg8bit_trainextra.zip" in capsys.readouterr().out
    shutil.rmtree(layout.root / "leftImg8bit" / "test")
    with pytest.raises(FileNotFoundError, match="no \\*_leftImg8bit.png images of split 'train'"):
        Cityscapes27(layout.root, "train", "train")


# ---- a folder of your own images --------------------------------------------------------------------------
def test_folder_with_labels_and_a_class_table(tmp_path):
    layout = write_folder(tmp_path / "f", table="yaml")
    ds = FolderDataset(layout.root, "val", "eval", res=64)
    assert ds.class_names == tuple(FOLDER_NAMES) and ds.thing_classes == tuple(FOLDER_THINGS)
    assert ds.stuff_classes == (0, 1) and ds.images == layout.images["all"]  # no split folders: same images
    for i in range(len(ds)):
        image, label = ds.load(i)
        raw = layout.labels[ds.image_path(i)].astype(np.int64)
        assert image.shape == (3, *raw.shape)  # RGBA, grayscale, nested, .jpeg: all RGB
        assert np.array_equal(label.numpy(), np.where(raw == 255, -1, raw))
        _, image, label = ds[i]
        assert image.shape == (3, 64, 64) and label.shape == (64, 64)  # small.png (40 x 50) is upsampled
    train = FolderDataset(layout.root, "train", "train", res=32, base_res=48)
    assert len(train) == 5 and all(train.load(i)[0].shape == (3, 48, 48) for i in range(5))


def test_folder_splits_json_table_and_no_labels(tmp_path, capsys):
    layout = write_folder(tmp_path / "s", splits=True, labels=True, table="json")
    table = layout.root / "table.json"
    val = FolderDataset(layout.root, "val", "eval", class_table=table)
    assert val.images == layout.images["val"] and val.thing_classes == (2, 3)
    assert FolderDataset(layout.root, "train", "eval", class_table=table).images == layout.images["train"]
    with pytest.raises(FileNotFoundError, match="classes.yaml: no class table for the labels"):
        FolderDataset(layout.root, "val", "eval")
    assert main(["prepare", "folder", str(layout.root), "--class-table", str(table), "--verify"]) == 0
    assert "images/val: images 5, label maps 5" in capsys.readouterr().out
    assert main(["prepare", "folder", str(layout.root)]) != 0
    assert "classes.yaml: no class table" in capsys.readouterr().out

    bare = write_folder(tmp_path / "n", labels=False, table=None)
    ds = FolderDataset(bare.root, "val", "eval", res=32, n_classes=5)
    assert ds.class_names == ("class0", "class1", "class2", "class3", "class4") and ds.thing_classes == ()
    assert (ds[0][2] == -1).all() and ds[0][2].shape == (32, 32)


def test_folder_bad_input(tmp_path):
    layout = write_folder(tmp_path / "b")
    label = layout.root / "labels" / "beach.png"
    Image.fromarray(np.full((90, 120), 4, np.uint8)).save(label)  # class 4 of a 4-class table
    with pytest.raises(BadFile, match=r"beach\.png: label values \{4\} outside 0\.\.3 and 255"):
        FolderDataset(layout.root, "val", "eval").load(0)
    label.unlink()
    with pytest.raises(FileNotFoundError, match=r"labels/beach\.png: missing"):
        FolderDataset(layout.root, "val", "eval")
    for text, message in [
        ("names: [a, a]\n", "distinct names"),
        ("names: [a, b]\nthings: [2]\n", r"things=\[2\]"),
        ("names: [a]\ncolours: [red]\n", "unknown key"),
        ("- a\n", "not a mapping"),
    ]:
        (layout.root / "classes.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            FolderDataset(layout.root, "train", "train")
    shutil.rmtree(layout.root / "images")
    with pytest.raises(FileNotFoundError, match="images: no .jpg/.jpeg/.png images"):
        FolderDataset(layout.root, "train", "train")


# ---- configuration ----------------------------------------------------------------------------------------
def test_build_dataset_for_every_on_disk_set(tmp_path, coco):
    city = write_cityscapes(tmp_path / "city")
    folder = write_folder(tmp_path / "folder")
    common = {"res": 32, "base_res": 48}
    for cfg, kind in [
        (Config(dataset="cocostuff27", data_root=str(coco.root), **common), CocoStuff27),
        (Config(dataset="cityscapes27", data_root=str(city.root), **common), Cityscapes27),
        (Config(dataset="folder", data_root=str(folder.root), **common), FolderDataset),
    ]:
        ev, tr = build_dataset(cfg, "val", "eval"), build_dataset(cfg, "train", "train")
        assert isinstance(ev, kind) and isinstance(tr, kind) and (ev.mode, tr.mode) == ("eval", "train")
        _, image, label = ev[0]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32) and tr.load(0)[0].shape == (3, 48, 48)
    cfg = Config(dataset="cocostuff27", data_root=str(coco.root), curated=False, max_images=3, **common)
    assert len(build_dataset(cfg, "train", "train")) == 3
    with pytest.raises(ValueError, match="data_root=None: dataset=folder"):
        Config(dataset="folder")
    with pytest.raises(ValueError, match="dataset=coco: expected one of"):
        Config(dataset="coco", data_root="x")
    with pytest.raises(ValueError, match="base_res=0"):
        Config(base_res=0)


def test_paper_preset():
    cfg = load_preset("paper")
    assert (cfg.dataset, cfg.res, cfg.base_res, cfg.n_clusters) == ("cocostuff27", 320, 640, 27)
    # PiCIE's script: clustering in batches of 256, training in batches of 128 (what fits a 24 GB card)
    assert (cfg.batch_size_cluster, cfg.batch_size_train) == (256, 128)
    assert (cfg.bn_eval, cfg.switch, cfg.ib_lr_factor, cfg.ib_reset_optimizer) == ("running", "min_loss", 1.0, True)
    assert (cfg.epochs_ce, cfg.epochs_focal, cfg.epochs_ib_focal) == (10, 15, 20)
    assert (cfg.lr, cfg.balance, cfg.pretrained, cfg.curated) == (1e-4, "picie", "imagenet", True)


def test_batches_made_from_the_files_bytes_equal_the_per_item_ones(tmp_path):
    """The GPU's way (workers read bytes, the batch is decoded and made in this process) run on CPU tensors:
    the same batches, bit for bit, as items made per item, with or without a worker, in both modes, for JPEGs
    (COCO) and PNGs (Cityscapes, decoded by the workers), and the same bad files left out and named."""
    coco = write_cocostuff(tmp_path / "c")
    train = CocoStuff27(coco.root, "train", "train", res=32, base_res=48, curated=False)
    bad_image = train.image_path(1)
    bad_image.write_bytes(bad_image.read_bytes()[:500])  # truncated: found only when decoded
    val = CocoStuff27(coco.root, "val", "eval", res=32, curated=False)
    bad_labels = [val.label_path(0), val.label_path(2)]
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(bad_labels[0])  # another size than its image's
    Image.fromarray(np.full((500, 375), 200, np.uint8)).save(bad_labels[1])  # values outside the table
    city = write_cityscapes(tmp_path / "city")
    sets = [
        (train, [bad_image]),
        (val, bad_labels),
        (Cityscapes27(city.root, "train", "train", res=16, base_res=24), []),
        (Cityscapes27(city.root, "val", "eval", res=16), []),
    ]
    cfg = Config(device="cpu", num_workers=0)
    for dataset, bad_files in sets:
        if dataset.mode == "train":
            dataset.set_view_params(draw_view_params(len(dataset), Config(), torch.Generator().manual_seed(5)))
        order = list(range(len(dataset)))[::-1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            per_item = loader.Batches(dataset, order, 3, cfg, on_device=False)
            expected = list(per_item)
        assert len([w for w in caught if issubclass(w.category, BadFileWarning)]) == len(bad_files)
        assert sum(len(batch[0]) for batch in expected) == len(dataset) - len(bad_files) > 0
        assert per_item.skipped_files == sorted(map(str, bad_files)) and not per_item.on_device
        for workers in (0, 1):
            batches = loader.Batches(dataset, order, 3, cfg.replace(num_workers=workers), on_device=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BadFileWarning)
                made = list(batches)
            assert batches.skipped_files == sorted(map(str, bad_files)), (dataset.mode, workers)
            for a, b in zip(expected, made, strict=True):
                assert len(a) == len(b) == (2 if dataset.mode == "train" else 3)
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), (type(dataset), workers)


def test_an_evaluation_batch_whose_every_label_is_bad_is_empty_not_an_error(tmp_path):
    """Under torchrun a process's share of a step can be all bad files: an empty batch of the right shapes."""
    coco = write_cocostuff(tmp_path / "c")
    val = CocoStuff27(coco.root, "val", "eval", res=16, curated=False)
    for i in (0, 1):
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(val.label_path(i))
    with pytest.warns(BadFileWarning, match="a label map of 9x9"):
        index, images, labels, skipped = val.eval_pairs([0, 1], [val.encoded(0), val.encoded(1)], "cpu")
    assert index.shape == (0,) and images.shape == (0, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.shape == (0, 16, 16) and labels.dtype == torch.int64 and [s.index for s in skipped] == [0, 1]
