"""One documented configuration whose defaults are the paper's setting.

Presets (``picie_lib/presets/*.yaml``) are plain parameter files listing only what they change;
the CLI, the library and papermill all read them. An unknown key is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, fields
from pathlib import Path, PurePath
from typing import Any

import yaml

from picie_lib.rules import (
    DEVICE,
    PROBABILITY,
    SEED,
    SEEDS,
    SWITCH,
    boolean,
    choice,
    integer,
    interval,
    multiple_of,
    number,
    optional,
    param,
    text,
)
from picie_lib.runs import write_json
from picie_lib.yaml_text import read_yaml

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
    "ib_focal_at_switch": "IB-Focal at the switch (CE stopped there)",
}
BALANCES = ("picie", "inverse", "none")
IB_FEATURES = ("normalized", "raw")
BN_EVALS = ("running", "batch")
KMEANS_BACKENDS = ("auto", "faiss", "torch")
DATASETS = ("synthetic", "cocostuff27", "cityscapes27", "folder")
SYNTHETIC_COLOURS = ("class", "instance")


def rule_error(key: str, value: Any, as_given: Any = None) -> str | None:
    """``"key=value: expected ..."`` when ``value`` breaks ``key``'s rule, else None; the message shows
    ``as_given`` (the value before coercion) when there is one."""
    rule = _FIELDS[key].metadata["rule"]
    shown = _shown(value if as_given is None else as_given)
    return None if rule.holds(value) else f"{key}={shown}: expected {rule.expected}"


def _shown(value: Any) -> str:
    """A value as the user wrote it (YAML: lists, null, true)."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
    except yaml.YAMLError:  # a Path, a numpy number: no YAML for it
        return repr(value)


@dataclass
class Config:
    # --- data ---------------------------------------------------------------------------------
    dataset: str = param("synthetic", choice(*DATASETS))
    """Data set: "synthetic" (built in, generated from the seed), or on disk at `data_root` (docs/real-data.md):
    "cocostuff27" (COCO-Stuff-27), "cityscapes27" (Cityscapes-27) or "folder" (your own images)."""
    data_root: str | None = param(None, optional(text))
    """Root folder of an on-disk data set (unused by "synthetic")."""
    base_res: int = param(640, integer(1))
    """On-disk data: side of the square base image the training views are cut from (PiCIE --res2):
    shorter side resized to it, then a centre crop. The synthetic scenes use `image_size` instead."""
    curated: bool = param(True, boolean)
    """COCO-Stuff-27: only the curated images (IIC's lists, 49,629 train / 2,175 val); false = whole splits."""
    class_table: str | None = param(None, optional(text))
    """Folder data set: YAML/JSON class table (`names`, `things`); null = `data_root`/classes.yaml."""
    max_images: int | None = param(None, optional(integer(1)))
    """On-disk data: keep the first N images of each split (quick trials); null = all."""
    image_size: int = param(96, integer(8))
    """Synthetic: side of the generated images (the base resolution the views are cut from)."""
    n_train: int = param(400, integer(1))
    """Synthetic: number of training images."""
    n_val: int = param(100, integer(1))
    """Synthetic: number of validation images."""
    data_seed: int = param(0, SEED)
    """Synthetic: seed of the generated scenes (fixed across training seeds)."""
    synthetic_colours: str = param("class", choice(*SYNTHETIC_COLOURS))
    """Synthetic: "class" (each class near its own colour) or "instance" (colour a nuisance: each instance
    draws hue, saturation and value within PiCIE's jitter range around its class's; identity lies in
    texture and shape). The layout and textures are the same either way (docs/demo.md)."""
    res: int = param(320, multiple_of(32, "the backbone's stride"))
    """Network input side for both views (PiCIE --res1) and the evaluation crop (--res)."""

    # --- model --------------------------------------------------------------------------------
    pretrained: str | None = param(None, optional(text))
    """Backbone weights: null (random), "imagenet" (torchvision, needs internet), "pretext" (a backbone
    pretrained on built-in texture scenes whose classes are not the demo's, trained once and cached:
    `picie_lib/pretext.py`) or a state-dict path."""

    # --- clustering (picie.md section 2) --------------------------------------------------------
    n_clusters: int = param(27, integer(2))
    """K: clusters per k-means (PiCIE K_train = K_test = 27)."""
    kmeans_init_batches: int = param(20, integer(1))
    """Batches whose pixels seed the k-means fit before the running-mean updates (KM_INIT)."""
    kmeans_iters: int = param(20, integer(1))
    """Lloyd iterations of that initial fit (KM_ITER)."""
    kmeans_backend: str = param("auto", choice(*KMEANS_BACKENDS))
    """"auto" (faiss when importable, torch on a GPU that faiss cannot use), "faiss" or "torch"."""
    kmeans_max_init_points: int | None = param(None, optional(integer(1)))
    """Cap on the pixels of the initial fit (subsampled uniformly); null = all pixels, as PiCIE."""
    batch_size_cluster: int = param(256, integer(1))
    """Images per batch in the clustering and labelling passes."""
    eval_kmeans_restarts: int = param(1, integer(1))
    """Starts of the evaluation's fresh k-means (its initial fit); the one of lowest inertia is kept, as faiss's
    `nredo` and scikit-learn's `n_init`. 1 is PiCIE's. Measured on the demo, restarts of PiCIE's mini-batch fit do
    not narrow the scores' spread over k-means seeds; with the whole train split in the initial fit
    (`eval_kmeans_init_batches`) 30 of them narrow it (All Acc range 2.9 -> 1.3 over 5 seeds) at about 6x the
    cost, and score lower (docs/evaluation-noise.md)."""
    eval_kmeans_init_batches: int | None = param(None, optional(integer(1)))
    """Batches in the initial fit of the evaluation's k-means; null = `kmeans_init_batches` (PiCIE's protocol).
    At least the train split's batches: one Lloyd fit on every train pixel, no running-mean updates."""
    eval_seeds: int = param(1, integer(1))
    """k-means draws the evaluation scores the same weights with (seeds: a block per training seed, seed x draws
    + 0, 1, ...); the scores are their mean (noise / sqrt(draws)); metrics.json holds every draw's and their spread
    (docs/evaluation-noise.md)."""

    # --- training (design section 3) ------------------------------------------------------------
    loss: str = param("ce", choice(*LOSSES))
    """"ce" (PiCIE), "focal" (method 1) or "ib_focal" (method 2: CE, then IB-Focal)."""
    epochs_ce: int = param(10, integer(1))
    """Epochs of the CE baseline (PiCIE: 10)."""
    epochs_focal: int = param(15, integer(1))
    """Epochs of method 1 (paper: 15)."""
    epochs_ib_focal: int = param(20, integer(1))
    """Epochs of method 2, both phases (paper: 20)."""
    batch_size_train: int = param(256, integer(1))
    """Images per training batch (paper: 256; PiCIE's script: 128)."""
    lr: float = param(1e-4, number(above=0))
    """Adam learning rate, constant (PiCIE on COCO)."""
    balance: str = param("picie", choice(*BALANCES))
    """Class weights of CE (PiCIE, IB-Focal's CE phase): "picie" (counts/sum, the original's), "inverse", "none".
    The IB authors' CE phase has none (cifar_train.py L179: nn.CrossEntropyLoss(weight=None)); the paper's
    method 2 starts from PiCIE's CE, so IB-Focal's CE phase keeps PiCIE's by default."""
    focal_balance: str = param("none", choice(*BALANCES))
    """Class weights of Focal (method 1): the paper's FL = -(1 - p)^2 log p has none; a drop-in swap of
    PiCIE's CrossEntropyLoss(weight=counts/sum) would keep PiCIE's ("picie"). The paper does not say."""
    ib_balance: str = param("inverse", choice(*BALANCES))
    """Class weights of the IB-Focal phase (IB authors: inverse frequency summing to K, cifar_train.py
    L152-156, train_rule IBReweight)."""
    gamma: float = param(2.0, number(at_least=0))
    """Focal exponent of method 1 (paper: FL = -(1 - p)^2 log p)."""
    ib_gamma: float = param(2.0, number(at_least=0))
    """Focal exponent inside IB-Focal: the paper's FL (gamma 2), which method 2 puts in place of CE. The IB
    authors' scripts use 1 (cifar_train.py L180: IB_FocalLoss(..., alpha=1000, gamma=1))."""
    ib_alpha: float = param(1000.0, number(above=0))
    """IB scale alpha (IB authors' training scripts: 1000, cifar_train.py L180). A constant factor of the loss:
    under SGD it sets the IB phase's step size, under Adam almost nothing (04_losses)."""
    ib_eps: float = param(1e-3, number(above=0))
    """IB epsilon (IB authors: 1e-3, losses.py L28)."""
    ib_detach: bool = param(False, boolean)
    """Detach the IB factor (treat it as a weight). False = the IB authors' code (losses.py L52-56)."""
    ib_weighted_pt: bool = param(True, boolean)
    """p_t of IB-Focal's focal factor from the class-weighted CE, p = exp(-w_t ce) = p_t^w_t, as the IB
    authors' code (losses.py L39: p = exp(-input_values), where L56 passes F.cross_entropy(..., weight=w)).
    False: p_t of the unweighted softmax. The IB factor's ||softmax - onehot||_1 is unweighted either way."""
    ib_feature: str = param("normalized", choice(*IB_FEATURES))
    """The feature h whose L1 norm enters the IB factor alpha / (||softmax - y||_1 ||h||_1 + eps):
    "normalized", the classifier's input (PiCIE's unit pixel feature), as the IB authors use the input of
    their last FC layer (models/resnet_cifar.py L130) and as the IB paper's Eq. 2-4 derive the gradient
    norm of that layer; "raw", the FPN's output before the L2 normalisation."""
    ib_lr_factor: float = param(1.0, number(above=0))
    """Adam's learning rate from the switch on: lr x this; 1 keeps PiCIE's rate. The IB authors drop their SGD
    rate 100x when the IB phase starts (cifar_train.py L341-356, adjust_learning_rate): under SGD a step grows with
    the loss, and alpha = 1000 keeps their IB loss far above the late CE loss, so their IB steps stay of useful
    size. Adam's step does not grow with the loss (04_losses), so under Adam the same drop makes every IB step
    100x smaller and the phase barely trains; 0.01 reproduces that literal factor (docs/loss-options.md)."""
    ib_reset_optimizer: bool = param(True, boolean)
    """Restart Adam's moments at the switch, so that the IB phase starts as training did: steps of the rate's
    size, whatever alpha. Carried over, the moments hold the CE phase's gradients, 30-100x smaller than
    IB-Focal's, and Adam's first IB steps are far too large until they adapt (about 1 / (1 - beta2) = 1,000
    steps). The IB authors keep one SGD optimizer through both phases (cifar_train.py L63-65)."""
    ib_alpha_match: bool = param(False, boolean)
    """Set alpha at the switch so that IB-Focal's loss on the IB phase's first batch equals CE's loss on it (the
    IB author's rule for alpha: the IB loss at the CE loss's scale, pseulki/IB-Loss issue #1); `ib_alpha` is then
    the starting value it rescales. The alpha used is in log.jsonl and summary.json."""
    temperature: float = param(1.0, number(above=0))
    """Logits are f.c / temperature; 1.0 is PiCIE (bounded cosine logits)."""
    switch: str | int = param("min_loss", SWITCH)
    """IB-Focal switch. The paper: "the epoch at which the loss reached its minimum". "min_loss": the first CE
    epoch whose loss fails to improve on the lowest before it marks the minimum (capped at half the epochs);
    "global_min": the lowest CE loss over half the epochs (the later epochs discarded); or the number of CE
    epochs. On PiCIE's COCO logs the first rule lands after epoch 5-6, the second after epoch 6-10."""
    bn_eval: str = param("running", choice(*BN_EVALS))
    """BatchNorm in the passes that do not train. "running", PiCIE's code: the clustering passes (each
    epoch's, and the evaluation's fresh k-means) run in train() mode, on batch statistics, and update the
    running statistics; labelling and evaluation run in eval() mode on them (commons.py:
    run_mini_batch_kmeans model.train(), compute_labels and evaluate model.eval()). The evaluation works on
    a copy, so the saved weights stay as trained. "batch": every such pass on its batch's statistics,
    running statistics untouched (then evaluation scores move a little with eval_batch_size)."""

    # --- views (design section 3, picie.md section 4) ---------------------------------------------
    brightness: tuple[float, float] = param((0.7, 1.3), interval(at_least=0))
    contrast: tuple[float, float] = param((0.7, 1.3), interval(at_least=0))
    saturation: tuple[float, float] = param((0.7, 1.3), interval(at_least=0))
    hue: tuple[float, float] = param((-0.1, 0.1), interval(at_least=-0.5, at_most=0.5))
    p_jitter: float = param(0.8, PROBABILITY)
    """Probability of each of brightness, contrast, saturation and hue, drawn independently."""
    p_blur: float = param(0.5, PROBABILITY)
    blur_sigma: tuple[float, float] = param((0.1, 2.0), interval(above=0))
    """Gaussian blur sigma range, in pixels of the base image."""
    p_grayscale: float = param(0.2, PROBABILITY)
    min_scale: float = param(0.5, number(above=0, at_most=1))
    """Smallest crop side, as a fraction of the image side."""
    p_flip: float = param(0.5, PROBABILITY)

    # --- runtime ------------------------------------------------------------------------------
    seed: int = param(0, SEED)
    """Seed of the model initialisation, the views, the k-means and the batch order."""
    seeds: list[int] = param(default_factory=lambda: [0], check=SEEDS)
    """Seeds run by `compare`."""
    device: str = param("auto", DEVICE)
    """"auto" (cuda when available), "cpu" or "cuda"."""
    num_workers: int = param(0, integer(0))
    """DataLoader worker processes."""
    channels_last: bool = param(True, boolean)
    """Channels-last memory format (same numbers, faster convolutions)."""
    amp: bool = param(False, boolean)
    """bfloat16 autocast for the network (losses stay float32). Off = exact float32."""
    eval_batch_size: int = param(64, integer(1))
    """Images per batch at evaluation."""
    probe_epochs: int = param(20, integer(0))
    """Epochs of the supervised linear probe (the ceiling reference in `compare`)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # a path given from Python: stored as the text JSON and YAML hold
            if isinstance(getattr(self, f.name), PurePath):
                setattr(self, f.name, str(getattr(self, f.name)))
        self.validate()

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Each field's rule (declared beside it), then the rules that join two fields."""
        for f in fields(self):
            problem = rule_error(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(problem)
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"data_root={self.data_root!r}: dataset={self.dataset} needs the folder of its files")

    def check_runnable(self, losses: tuple[str, ...] | None = None) -> None:
        """The rules that join parameters, for a run about to train ``losses`` (default: ``loss``). Checked
        before a run writes anything, not when a saved configuration is read back."""
        if self.res < 64:
            raise ValueError(
                f"res={self.res}: expected a multiple of 32 >= 64 (at 32 the backbone's last stage is 1 x 1, and "
                "BatchNorm needs more than one value per channel for a batch of one image)"
            )
        if self.kmeans_max_init_points is not None and self.kmeans_max_init_points < self.n_clusters:
            raise ValueError(
                f"kmeans_max_init_points={self.kmeans_max_init_points}: expected at least n_clusters="
                f"{self.n_clusters} points for the k-means' initial fit"
            )
        if "ib_focal" not in (losses or (self.loss,)):
            return
        epochs = self.epochs_ib_focal
        if self.switch in ("min_loss", "global_min") and epochs < 2:
            raise ValueError(
                f"epochs_ib_focal={epochs} with switch={self.switch}: IB-Focal would never train (the switch "
                "follows at least one CE epoch); expected epochs_ib_focal >= 2, or switch=0 for IB-Focal from the start"
            )
        if isinstance(self.switch, int) and self.switch >= epochs:
            raise ValueError(
                f"switch={self.switch} with epochs_ib_focal={epochs}: IB-Focal would start at epoch {self.switch + 1}, "
                f"after the last; expected a switch below {epochs} (or min_loss)"
            )

    def epochs_for(self, loss: str | None = None) -> int:
        """Epochs of a method, in the paper's 10 : 15 : 20 proportions as the preset scales them."""
        return getattr(self, f"epochs_{loss or self.loss}")

    def replace(self, **changes: Any) -> Config:
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in fields(Config)}
_TUPLE_FIELDS = {name for name, f in _FIELDS.items() if str(f.type).startswith("tuple")}
_FLOAT_FIELDS = {name for name, f in _FIELDS.items() if f.type == "float"}


def _coerce(key: str, value: Any) -> Any:
    """YAML's types to the field's: a list to a tuple, an integer or a string such as "1e-4" (YAML 1.1
    reads it as a string) to a float. Anything else is left for the field's rule to refuse."""
    if key in _TUPLE_FIELDS and isinstance(value, list):
        return tuple(_coerce_float(v) for v in value)
    if key in _FLOAT_FIELDS:
        return _coerce_float(value)
    return value


def _coerce_float(value: Any) -> Any:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def checked(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` coerced to the fields' types, each checked against its field's rule; the message names
    ``source`` (a preset file, "-p", a checkpoint) and, for "-p", the mistaken override as typed."""
    unknown = sorted(set(values) - set(_FIELDS), key=str)
    if unknown:
        where = f"-p {unknown[0]}={_shown(values[unknown[0]])}" if source == "-p" else source
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}{did_you_mean(unknown, _FIELDS)}")
    out = {k: _coerce(k, v) for k, v in values.items()}
    for key, value in out.items():
        problem = rule_error(key, value, values[key])
        if problem:
            raise ValueError(f"-p {problem}" if source == "-p" else f"{source}: {problem}")
    return out


def did_you_mean(unknown: list, known) -> str:
    """ "; did you mean X?" for the first unknown name close to a known one, else the known names listed."""
    close = difflib.get_close_matches(str(unknown[0]), list(known), n=1)
    return f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"


def from_dict(values: dict[str, Any], source: str = "parameters") -> Config:
    """Build a Config; an unknown key or a value its field's rule refuses is named with its source."""
    return Config(**checked(values, source))


def preset_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"--preset {path}: no such file")
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"--preset {name!r}: expected one of {available} or the path of a .yaml file")
    return path


def load_preset(name: str, overrides_source: str = "parameters", **overrides: Any) -> Config:
    """Paper defaults, then the preset's keys, then ``overrides``; each checked and named by its source
    (the preset file, or ``overrides_source``: "-p" on the command line)."""
    path = preset_path(name)
    try:
        content = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected a YAML file of parameters") from None
    values = read_yaml(content, str(path)) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    return Config(**{**checked(values, str(path)), **checked(overrides, overrides_source)})


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``lr=3e-4``, ``switch=5``, ``pretrained=null``)."""
    if "=" not in text:
        raise ValueError(f"-p {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), read_yaml(value, f"-p {text}")


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """The ``-p`` options in order; a key given twice is refused (which one was meant?)."""
    pairs = [parse_override(t) for t in texts]
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"-p {', -p '.join(repeated)}: given more than once; keep one")
    return dict(pairs)


# Parameters that change how a run executes, not what it computes.
RUNTIME_KEYS = frozenset({"device", "num_workers", "seeds"})
# The evaluation's own parameters: what `evaluate` may change on a finished run (training never reads them).
EVALUATION_KEYS = ("eval_seeds", "eval_kmeans_restarts", "eval_kmeans_init_batches", "eval_batch_size")


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
    write_json(path, cfg.to_dict())


def load_config(path: Path) -> Config:
    """The configuration a run saved (``config.json``); a damaged file is named."""
    try:
        values = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it from a copy, or start the run again") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    return from_dict(values, source=str(path))
