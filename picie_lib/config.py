"""One documented configuration whose defaults are the paper's setting.

Presets (``picie_lib/presets/*.yaml``) are plain parameter files listing only what they change;
the CLI, the library and papermill all read them. An unknown key is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from picie_lib.runs import atomic_write_text

PRESET_DIR = Path(__file__).parent / "presets"
LOSSES = ("ce", "focal", "ib_focal")
LOSS_NAMES = {"ce": "CE", "focal": "Focal", "ib_focal": "IB-Focal"}  # the phases of a run: the loss it trains with
# How every table, figure and title names a method (rows of results.json use the keys).
METHOD_NAMES = {
    "ce": "PiCIE (CE)",
    "focal": "Method 1: Focal",
    "ib_focal": "Method 2: IB-Focal",
    "rgb_kmeans": "k-means on RGB pixels",
    "untrained": "k-means on the network before training (floor)",
    "linear_probe": "supervised linear probe on PiCIE's features (ceiling)",
}
BALANCES = ("picie", "inverse", "none")
IB_FEATURES = ("normalized", "raw")
BN_EVALS = ("running", "batch")
KMEANS_BACKENDS = ("auto", "faiss", "torch")
DATASETS = ("synthetic", "cocostuff27", "cityscapes27", "folder")
SYNTHETIC_COLOURS = ("class", "instance")


@dataclass
class Config:
    # --- data ---------------------------------------------------------------------------------
    dataset: str = "synthetic"
    """Data set: "synthetic" (built in, generated from the seed), or on disk at `data_root` (README, "Real
    data"): "cocostuff27" (COCO-Stuff-27), "cityscapes27" (Cityscapes-27) or "folder" (your own images)."""
    data_root: str | None = None
    """Root folder of an on-disk data set (unused by "synthetic")."""
    base_res: int = 640
    """On-disk data: side of the square base image the training views are cut from (PiCIE --res2):
    shorter side resized to it, then a centre crop. The synthetic scenes use `image_size` instead."""
    curated: bool = True
    """COCO-Stuff-27: only the curated images (IIC's lists, 49,629 train / 2,175 val); false = whole splits."""
    class_table: str | None = None
    """Folder data set: YAML/JSON class table (`names`, `things`); null = `data_root`/classes.yaml."""
    max_images: int | None = None
    """On-disk data: keep the first N images of each split (quick trials); null = all."""
    image_size: int = 96
    """Synthetic: side of the generated images (the base resolution the views are cut from)."""
    n_train: int = 400
    """Synthetic: number of training images."""
    n_val: int = 100
    """Synthetic: number of validation images."""
    data_seed: int = 0
    """Synthetic: seed of the generated scenes (fixed across training seeds)."""
    synthetic_colours: str = "class"
    """Synthetic: "class" (each class near its own colour) or "instance" (colour a nuisance: each instance
    draws hue, saturation and value within PiCIE's jitter range around its class's; identity lies in
    texture and shape). The layout and textures are the same either way (README, "The built-in demo")."""
    res: int = 320
    """Network input side for both views (PiCIE --res1) and the evaluation crop (--res)."""

    # --- model --------------------------------------------------------------------------------
    pretrained: str | None = None
    """Backbone weights: null (random), "imagenet" (torchvision, needs internet), "pretext" (a backbone
    pretrained on built-in texture scenes whose classes are not the demo's, trained once and cached:
    `picie_lib/pretext.py`) or a state-dict path."""

    # --- clustering (picie.md section 2) --------------------------------------------------------
    n_clusters: int = 27
    """K: clusters per k-means (PiCIE K_train = K_test = 27)."""
    kmeans_init_batches: int = 20
    """Batches whose pixels seed the k-means fit before the running-mean updates (KM_INIT)."""
    kmeans_iters: int = 20
    """Lloyd iterations of that initial fit (KM_ITER)."""
    kmeans_backend: str = "auto"
    """"auto" (faiss when importable, torch on a GPU that faiss cannot use), "faiss" or "torch"."""
    kmeans_max_init_points: int | None = None
    """Cap on the pixels of the initial fit (subsampled uniformly); null = all pixels, as PiCIE."""
    batch_size_cluster: int = 256
    """Images per batch in the clustering and labelling passes."""

    # --- training (design section 3) ------------------------------------------------------------
    loss: str = "ce"
    """"ce" (PiCIE), "focal" (method 1) or "ib_focal" (method 2: CE, then IB-Focal)."""
    epochs_ce: int = 10
    """Epochs of the CE baseline (PiCIE: 10)."""
    epochs_focal: int = 15
    """Epochs of method 1 (paper: 15)."""
    epochs_ib_focal: int = 20
    """Epochs of method 2, both phases (paper: 20)."""
    batch_size_train: int = 256
    """Images per training batch (paper: 256; PiCIE's script: 128)."""
    lr: float = 1e-4
    """Adam learning rate, constant (PiCIE on COCO)."""
    balance: str = "picie"
    """Class weights of CE (PiCIE, IB-Focal's CE phase): "picie" (counts/sum, the original's), "inverse", "none".
    The IB authors' CE phase has none (cifar_train.py L179: nn.CrossEntropyLoss(weight=None)); the paper's
    method 2 starts from PiCIE's CE, so IB-Focal's CE phase keeps PiCIE's by default."""
    focal_balance: str = "none"
    """Class weights of Focal (method 1): the paper's FL = -(1 - p)^2 log p has none; a drop-in swap of
    PiCIE's CrossEntropyLoss(weight=counts/sum) would keep PiCIE's ("picie"). The paper does not say."""
    ib_balance: str = "inverse"
    """Class weights of the IB-Focal phase (IB authors: inverse frequency summing to K, cifar_train.py
    L152-156, train_rule IBReweight)."""
    gamma: float = 2.0
    """Focal exponent of method 1 (paper: FL = -(1 - p)^2 log p)."""
    ib_gamma: float = 2.0
    """Focal exponent inside IB-Focal: the paper's FL (gamma 2), which method 2 puts in place of CE. The IB
    authors' scripts use 1 (cifar_train.py L180: IB_FocalLoss(..., alpha=1000, gamma=1))."""
    ib_alpha: float = 1000.0
    """IB scale alpha (IB authors' training scripts: 1000, cifar_train.py L180)."""
    ib_eps: float = 1e-3
    """IB epsilon (IB authors: 1e-3, losses.py L28)."""
    ib_detach: bool = False
    """Detach the IB factor (treat it as a weight). False = the IB authors' code (losses.py L52-56)."""
    ib_weighted_pt: bool = True
    """p_t of IB-Focal's focal factor from the class-weighted CE, p = exp(-w_t ce) = p_t^w_t, as the IB
    authors' code (losses.py L39: p = exp(-input_values), where L56 passes F.cross_entropy(..., weight=w)).
    False: p_t of the unweighted softmax. The IB factor's ||softmax - onehot||_1 is unweighted either way."""
    ib_feature: str = "normalized"
    """The feature h whose L1 norm enters the IB factor alpha / (||softmax - y||_1 ||h||_1 + eps):
    "normalized", the classifier's input (PiCIE's unit pixel feature), as the IB authors use the input of
    their last FC layer (models/resnet_cifar.py L130) and as the IB paper's Eq. 2-4 derive the gradient
    norm of that layer; "raw", the FPN's output before the L2 normalisation."""
    ib_lr_factor: float = 0.01
    """Learning rate from the switch on: lr x this. The paper is silent; the IB authors drop their SGD
    rate 100x when the IB phase starts (cifar_train.py L341-356, adjust_learning_rate: lr = args.lr * 0.01
    once epoch > start_ib_epoch), which offsets alpha = 1000. Applied here to Adam's rate as they apply it
    to SGD's. 1 = no drop."""
    ib_reset_optimizer: bool = False
    """Reset Adam's moments at the switch. The paper is silent; the IB authors keep one optimizer (SGD with
    momentum) through both phases (cifar_train.py L63-65, created once)."""
    temperature: float = 1.0
    """Logits are f.c / temperature; 1.0 is PiCIE (bounded cosine logits)."""
    switch: str | int = "min_loss"
    """IB-Focal switch: "min_loss" (at the CE minimum, capped at half the epochs) or the number of CE epochs."""
    bn_eval: str = "running"
    """BatchNorm in the passes that do not train. "running", PiCIE's code: the clustering passes (each
    epoch's, and the evaluation's fresh k-means) run in train() mode, on batch statistics, and update the
    running statistics; labelling and evaluation run in eval() mode on them (commons.py:
    run_mini_batch_kmeans model.train(), compute_labels and evaluate model.eval()). The evaluation works on
    a copy, so the saved weights stay as trained. "batch": every such pass on its batch's statistics,
    running statistics untouched (then evaluation scores move a little with eval_batch_size)."""

    # --- views (design section 3, picie.md section 4) ---------------------------------------------
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.7, 1.3)
    hue: tuple[float, float] = (-0.1, 0.1)
    p_jitter: float = 0.8
    """Probability of each of brightness, contrast, saturation and hue, drawn independently."""
    p_blur: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Gaussian blur sigma range, in pixels of the base image."""
    p_grayscale: float = 0.2
    min_scale: float = 0.5
    """Smallest crop side, as a fraction of the image side."""
    p_flip: float = 0.5

    # --- runtime ------------------------------------------------------------------------------
    seed: int = 0
    """Seed of the model initialisation, the views, the k-means and the batch order."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds run by `compare`."""
    device: str = "auto"
    """"auto" (cuda when available), "cpu" or "cuda"."""
    num_workers: int = 0
    """DataLoader worker processes."""
    channels_last: bool = True
    """Channels-last memory format (same numbers, faster convolutions)."""
    amp: bool = False
    """bfloat16 autocast for the network (losses stay float32). Off = exact float32."""
    eval_batch_size: int = 64
    """Images per batch at evaluation."""
    probe_epochs: int = 20
    """Epochs of the supervised linear probe (the ceiling reference in `compare`)."""

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def one_of(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")

        one_of("loss", LOSSES)
        one_of("balance", BALANCES)
        one_of("focal_balance", BALANCES)
        one_of("ib_balance", BALANCES)
        one_of("ib_feature", IB_FEATURES)
        one_of("bn_eval", BN_EVALS)
        one_of("kmeans_backend", KMEANS_BACKENDS)
        one_of("dataset", DATASETS)
        one_of("synthetic_colours", SYNTHETIC_COLOURS)
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"data_root={self.data_root!r}: dataset={self.dataset} needs the folder of its files")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images={self.max_images!r}: expected a positive integer or null")
        if not isinstance(self.curated, bool):
            raise ValueError(f"curated={self.curated!r}: expected true or false")
        for name in (
            "image_size",
            "n_train",
            "n_val",
            "res",
            "base_res",
            "n_clusters",
            "kmeans_init_batches",
            "kmeans_iters",
            "batch_size_cluster",
            "batch_size_train",
            "eval_batch_size",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        for name in ("epochs_ce", "epochs_focal", "epochs_ib_focal", "num_workers", "probe_epochs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an integer >= 0")
        if self.res % 32:
            raise ValueError(f"res={self.res}: expected a multiple of 32 (the backbone's stride)")
        if not (
            self.temperature > 0 and self.lr > 0 and self.ib_alpha > 0 and self.ib_eps > 0 and self.ib_lr_factor > 0
        ):
            raise ValueError("temperature, lr, ib_alpha, ib_eps and ib_lr_factor must be positive")
        if not (self.gamma >= 0 and self.ib_gamma >= 0):
            raise ValueError(f"gamma={self.gamma}, ib_gamma={self.ib_gamma}: focal exponents must be >= 0")
        if self.switch != "min_loss" and not (isinstance(self.switch, int) and self.switch >= 0):
            raise ValueError(f"switch={self.switch!r}: expected 'min_loss' or a number of CE epochs >= 0")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale={self.min_scale}: expected a fraction in (0, 1]")
        for name in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}={[lo, hi]}: expected [low, high] with low <= high")

    def epochs_for(self, loss: str | None = None) -> int:
        """Epochs of a method, in the paper's 10 : 15 : 20 proportions as the preset scales them."""
        return getattr(self, f"epochs_{loss or self.loss}")

    def replace(self, **changes: Any) -> Config:
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


_TUPLE_FIELDS = {f.name for f in fields(Config) if str(f.type).startswith("tuple")}
_FLOAT_FIELDS = {f.name for f in fields(Config) if f.type == "float"}


def _coerce(key: str, value: Any) -> Any:
    if key in _TUPLE_FIELDS and isinstance(value, list):
        return tuple(float(v) for v in value)
    if key in _FLOAT_FIELDS and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            raise ValueError(f"{key}={value!r}: expected a number") from None
    return value


def from_dict(values: dict[str, Any], source: str = "parameters") -> Config:
    """Build a Config, naming the unknown keys and the source they came from."""
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return Config(**{k: _coerce(k, v) for k, v in values.items()})


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"preset {name!r}: expected one of {available} or the path of a .yaml file")
    return path


def load_preset(name: str, **overrides: Any) -> Config:
    """Paper defaults, then the preset's keys, then ``overrides``."""
    path = preset_path(name)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    return from_dict({**values, **overrides}, source=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``lr=3e-4``, ``switch=5``, ``pretrained=null``)."""
    if "=" not in text:
        raise ValueError(f"-p {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


# Parameters that change how a run executes, not what it computes.
RUNTIME_KEYS = frozenset({"device", "num_workers", "seeds"})


def differences(
    saved: dict[str, Any], cfg: Config, ignore: frozenset[str] = RUNTIME_KEYS, saved_as: str = "saved"
) -> list[str]:
    """``"key: saved X, now Y"`` for each parameter (outside ``ignore``) where ``cfg`` differs from a
    configuration saved with a result (a checkpoint's, an evaluation's)."""
    return [
        f"{k}: {saved_as} {saved.get(k)!r}, now {v!r}"
        for k, v in sorted(cfg.to_dict().items())
        if k not in ignore and saved.get(k) != v
    ]


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_config(path: Path) -> Config:
    return from_dict(json.loads(Path(path).read_text()), source=str(path))
