"""Typed configuration: one dataclass per concern, YAML presets, dotted overrides.

A run is described by a :class:`Co2SamConfig`, made of sections that map 1:1 onto
the YAML presets in ``co2sam/configs`` (``voc.yaml``, ``coco.yaml``, their
``*-reference.yaml`` variants, ``demo.yaml``).
Defaults reproduce the paper (``SPEC.md``); the presets only change what differs
between datasets. Any field can be overridden from the command line with
``--set section.field=value`` (the value is parsed as YAML: ``--set optim.lr=2e-4``,
``--set optim.milestones=[100,200]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

EvalMode = Literal["label-guided", "open", "both"]


class ConfigError(ValueError):
    """A configuration the user wrote cannot be used (unknown key, bad value)."""


@dataclass
class ModelConfig:
    """Which SAM to load and how to adapt it."""

    sam: str = "facebook/sam-vit-base"
    """Segmenter weights: SAM, SAM-HQ or SAM 2.1 as a hub id
    (``syscv-community/sam-hq-vit-base``, ``facebook/sam2.1-hiera-base-plus``), a local
    transformers folder, an official Meta file (``sam_vit_b_01ec64.pth``,
    ``sam2.1_hiera_base_plus.pt``) or a registered architecture (``tiny``, ``tiny_sam2``)."""
    lora_rank: int = 4
    """Rank of the LoRA adapters on the q and v projections of every encoder block."""
    lora_alpha: float = 4.0
    """LoRA alpha; the update is scaled by ``lora_alpha / lora_rank`` (1 by default)."""
    adapter: str | None = None
    """Folder of a saved adapter to start from (training) or to evaluate."""
    gradient_checkpointing: bool = False
    """Recompute encoder activations in the backward pass (saves memory, ViT-H)."""
    compile: bool = False
    """``torch.compile`` the image encoder for training (off: it did not win on CPU)."""
    attention: str = "auto"
    """Image-encoder attention: ``auto`` (the relative-position bias folded into q and k
    in bf16 on CUDA, for flash kernels; transformers' SDPA otherwise), ``folded``,
    ``sdpa`` or ``eager``. All compute the same function (float rounding apart)."""

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ConfigError(f"model.lora_rank must be >= 1, got {self.lora_rank}")
        _check_choice("model.attention", self.attention, ("auto", "folded", "sdpa", "eager"))


@dataclass
class DataConfig:
    """Where the images and their image-level labels come from."""

    dataset: Literal["voc", "coco", "folder", "synthetic"] = "voc"
    root: str = ""
    """Dataset root: the ``VOC2012`` folder (or a folder above it), the output of
    ``co2sam prepare coco``, or a custom folder."""
    train_split: str = "train_aug"
    """The training split: VOC's ``train_aug`` (with SBD) by default. A folder dataset
    that has ``train.txt`` but no ``train_aug.txt`` uses ``train`` (``<split>.txt`` lists a
    custom folder's split; without one a split is every image)."""
    val_split: str = "val"
    num_workers: int = 2
    preflight: bool = True
    """Before a long command (train, evaluate, pseudo-labels, boxes) starts, check every
    file of its split with check-data's rules (a fraction of a full read) and stop on
    errors, listing them (co2sam.data.preflight)."""
    skip_bad: bool = False
    """Leave out the images whose files fail the pre-flight (``--skip-bad``), each with a
    warning line and a line in the run folder's skipped.txt. Files that fail later,
    mid-run, are always skipped this way."""
    exclude: str | None = None
    """A file of image ids (one per line) to leave out of the training split, e.g. the
    ``flagged.txt`` that ``co2sam app``'s Review tab writes (``--exclude``)."""

    def __post_init__(self) -> None:
        _check_choice("data.dataset", self.dataset, ("voc", "coco", "folder", "synthetic"))
        if self.dataset == "folder" and self.train_split == "train_aug" and self.root:
            lists = Path(self.root).expanduser()
            if not (lists / "train_aug.txt").is_file() and (lists / "train.txt").is_file():
                self.train_split = "train"  # VOC's default names no list of a custom folder


@dataclass
class PromptConfig:
    """How class names become box prompts."""

    source: Literal["cache", "detector", "oracle", "simulated"] = "cache"
    """``cache``: read boxes made by ``co2sam boxes``; ``detector``: run the detector
    on the fly; ``oracle``: boxes from ground-truth masks (debugging, upper bound);
    ``simulated``: the demo's simulated detector (ground-truth instance boxes, jittered,
    missed and false boxes; only inside ``co2sam demo``)."""
    detector: str = "IDEA-Research/grounding-dino-base"
    """Detector hub id or local folder: Grounding DINO (the reference code uses
    swinb_cogcoor) or SAM 3 (``facebook/sam3``); see :mod:`co2sam.prompts.registry`."""
    box_threshold: float = 0.30
    """Keep a box whose confidence exceeds this (Grounding DINO: its box score; SAM 3:
    sigmoid(query logit) x sigmoid(presence logit))."""
    text_threshold: float = 0.25
    """Grounding DINO only: the box's best class-token score must exceed this."""
    max_boxes: int = 50
    """Cap on boxes per image; the most confident ones are kept."""
    cache_dir: str | None = None
    """Folder of box caches (one file per split); default: ``<data.root>/co2sam_boxes``."""
    batch_size: int = 1
    device: str = "auto"
    mode: Literal["auto", "per-class", "all"] = "auto"
    """``per-class``: query each labelled class name alone (training, as the reference);
    ``all``: all class names at once (open inference); ``auto``: per-class on
    ``data.train_split``, all on other splits."""
    image_min_size: int = 800
    """Detector input: shorter side resized to this (Grounding DINO's 800) ..."""
    image_max_size: int = 1333
    """... unless the longer side would exceed this (1333)."""
    synonyms: list[str] = field(default_factory=list)
    """Detector texts per class, ``"dataset_name=text|other text"`` (e.g.
    ``"tvmonitor=tv monitor|television"``); default: the readable class name."""
    compat: Literal["paper", "reference"] = "paper"
    """``paper``: co2sam's detection stage (readable class names, token-span classes,
    boxes following the weak view's flips). ``reference``: the published code's, for
    like-for-like comparison (co2sam.prompts.reference): the detector sees the image with
    red and blue swapped, resized to longest side 1024 (training) or resized and
    zero-padded to 1024 x 1024 (evaluation); captions of the dataset's names as written;
    a box gets the first class whose name is a substring of its phrase (else none); and
    training boxes are used unflipped on the flipped weak view. Box caches record it."""

    def __post_init__(self) -> None:
        _check_choice("prompts.source", self.source, ("cache", "detector", "oracle", "simulated"))
        _check_choice("prompts.compat", self.compat, ("paper", "reference"))
        if self.compat == "reference" and self.synonyms:
            raise ConfigError(
                "prompts.synonyms cannot be used with prompts.compat=reference (the published "
                "code queries the class names as written); drop one of them"
            )
        _check_choice("prompts.mode", self.mode, ("auto", "per-class", "all"))
        if not 0 < self.image_min_size <= self.image_max_size:
            raise ConfigError("prompts.image_min_size must be in 1..prompts.image_max_size")
        for entry in self.synonyms:
            if "=" not in entry:
                raise ConfigError(
                    f"prompts.synonyms entries look like name=text|text, got {entry!r}"
                )
        for name in ("box_threshold", "text_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"prompts.{name} must be in [0, 1], got {value}")
        if self.max_boxes < 1:
            raise ConfigError(f"prompts.max_boxes must be >= 1, got {self.max_boxes}")


@dataclass
class LossConfig:
    """Loss weights and the reference-compatibility switch (SPEC.md, training step)."""

    compat: Literal["paper", "reference"] = "paper"
    """Loss form. ``paper``: as the paper describes it (per-pixel focal, smooth-1 dice);
    ``reference``: the published code's form (focal on the mean BCE, the number of masks
    as focal alpha and dice smooth, the IoU target on logits, raw-logit pooling,
    last-image entropy; co2sam.losses). The published beta (30 VOC, 20 COCO) was tuned
    with the reference form, so the ``voc`` and ``coco`` presets use it."""
    focal_weight: float = 30.0
    """beta: 30 for VOC, 20 for COCO."""
    focal_alpha: float = 0.8
    focal_gamma: float = 2.0
    dice_smooth: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    template_weight: float = 1.0
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.3
    entropy_weight: float = 1.0
    """1 on VOC, 0 on COCO (the entropy term is a VOC-only ingredient)."""
    strong_view: bool = True
    """Feed the student the photometric strong view (False: the weak view; ablation)."""

    def __post_init__(self) -> None:
        _check_choice("loss.compat", self.compat, ("paper", "reference"))
        if self.contrastive_temperature <= 0:
            raise ConfigError("loss.contrastive_temperature must be > 0")


@dataclass
class OptimConfig:
    """Adam with linear warm-up and step decay."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 250
    milestones: list[int] = field(default_factory=lambda: [60000, 86666])
    gamma: float = 0.1
    schedule_unit: Literal["step", "image"] = "step"
    """What ``warmup_steps`` and ``milestones`` count. ``step``: optimizer steps, as
    published (one process, batch 1, so a step is one image). ``image``: training images
    seen, so with DDP (``devices x num_nodes`` processes) or a larger ``train.batch_size``
    the warm-up and the decays still come after the same number of images (epochs) as
    the published schedule. Under ``step``, N processes reach each milestone after N
    times as many images. The learning rate itself is never scaled."""

    def __post_init__(self) -> None:
        _check_choice("optim.schedule_unit", self.schedule_unit, ("step", "image"))
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError(f"optim.milestones must increase, got {self.milestones}")


@dataclass
class TrainConfig:
    """The training loop, devices and checkpoints."""

    epochs: int = 50
    batch_size: int = 1
    seed: int = 1337
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    """``auto``: bf16-mixed on GPU, 32-true on CPU; or any Fabric precision string."""
    out_dir: str = "runs/co2sam"
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every N optimizer steps (and at every epoch end)."""
    max_steps: int | None = None
    limit_train: int | None = None
    """Use only the first N training images (quick runs)."""
    limit_val: int | None = None
    val_every: int = 1
    """Validate every N epochs (0: never)."""
    log_every: int = 10
    template_cache_gib: float = 8.0
    """Memory per process for the T-teacher's outputs, kept across epochs (0: off).

    Plain SAM never changes, so its prediction for a weak view (one of 4 flips of an
    image) is computed once and reused; this skips one of the step's three encoder
    forwards. Roughly 12-25 KiB per box at 1024 (co2sam.train.template_cache): all
    views of VOC train_aug should fit in 1.5-3 GiB. When the budget is full, further
    views are computed every time."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "devices", "num_nodes", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.template_cache_gib < 0:
            raise ConfigError(
                f"train.template_cache_gib must be >= 0 (0 turns the cache off), "
                f"got {self.template_cache_gib}"
            )


@dataclass
class EvalConfig:
    """Evaluation, prediction and pseudo-label export."""

    mode: EvalMode = "both"
    """``label-guided``: ground-truth image labels filter the prediction (the
    published protocol; right for pseudo-labels). ``open``: no test-time labels."""
    compat: Literal["paper", "reference"] = "paper"
    """``paper``: co2sam's label-map assembly (SPEC.md, Inference). ``reference``: the
    published evaluation's, for like-for-like comparison with its numbers: background
    decided before the non-label classes are dropped (a pixel claimed only by a non-label
    box becomes the first class, not background), the class-score stack resized after the
    max over boxes, boxes whose phrase matched no class used as background boxes."""
    split: str = "val"
    batch_size: int = 4
    out_dir: str | None = None
    save_predictions: bool = True
    overlays: bool = False
    limit: int | None = None
    device: str = "auto"
    """Where inference runs: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda:1``..."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check_choice("eval.mode", self.mode, ("label-guided", "open", "both"))
        _check_choice("eval.compat", self.compat, ("paper", "reference"))


SETTINGS_CHANGES = "settings_changes"
"""The key of a run's record of settings changed on resume: in its ``config.yaml`` (after
the sections, read back as a record, not a setting), checkpoints and adapter/segmenter
JSON. Each entry: ``{"from_step": first step run with the new value, "key", "old",
"new"}``."""


class SavedConfig:
    """What every top-level config can do: become a dict and be written as YAML."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def save(self, path: str | Path, changes: list[dict[str, Any]] | None = None) -> Path:
        """Write the resolved config as YAML (atomically) and return the path.

        changes: the settings a resumed run changed (:data:`SETTINGS_CHANGES`), written
        after the sections so that the file says what the run ran with before them.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        data = self.to_dict()
        if changes:
            data[SETTINGS_CHANGES] = changes
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(path)
        return path


@dataclass
class Co2SamConfig(SavedConfig):
    """Everything a run needs; written resolved next to every run's outputs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PRESETS = ("voc", "coco", "voc-reference", "coco-reference", "demo")


def preset_path(name: str) -> Path:
    """Path of a bundled preset (``voc``, ``coco``, ``demo``)."""
    return Path(str(resources.files("co2sam") / "configs" / f"{name}.yaml"))


def load_config(
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    schema: type = Co2SamConfig,
    presets: tuple[str, ...] = PRESETS,
    preset_prefix: str = "",
) -> Any:
    """Build a config from a preset name or YAML file, then apply ``a.b=value`` overrides.

    schema: the top-level dataclass (its fields are the sections); ``presets`` are the
    names accepted for it, read from ``co2sam/configs/<preset_prefix><name>.yaml``
    (``co2sam distill --config voc`` reads ``distill-voc.yaml``).
    Raises :class:`ConfigError` naming the file or key on any problem.
    """
    data: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if str(config) in presets:
            path = preset_path(preset_prefix + str(config))
        if not path.is_file():
            raise ConfigError(
                f"config file not found: {config} (give a YAML path or one of {', '.join(presets)})"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
        data.pop(SETTINGS_CHANGES, None)  # a run's record of its history, not a setting
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        section, name = key.strip().split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"override {item!r}: {section} is not a section")
        data[section][name] = yaml.safe_load(raw) if raw.strip() else None
    return from_dict(data, schema)


def from_dict(data: dict[str, Any], schema: type = Co2SamConfig) -> Any:
    """Build a ``schema`` (default :class:`Co2SamConfig`) from nested dicts.

    Unknown sections and keys are refused.
    """
    sections = {}
    hints = get_type_hints(schema)
    for name, values in data.items():
        if name not in hints:
            raise ConfigError(f"unknown config section {name!r}; known: {', '.join(hints)}")
        sections[name] = _build_section(name, hints[name], values or {})
    return schema(**sections)


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {section!r} must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in section {section!r}; "
            f"known: {', '.join(sorted(known))}"
        )
    hints = get_type_hints(cls)
    coerced = {key: _coerce(f"{section}.{key}", hints[key], value) for key, value in values.items()}
    return cls(**coerced)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check (and gently convert, int -> float) one value against its type hint."""
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ConfigError(f"{key} cannot be empty")
    origin = get_origin(hint)
    if origin is Literal:
        _check_choice(key, value, get_args(hint))
        return value
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(key, args[0], item) for item in value]
    if args and origin is not list:  # Optional[X] / X | None
        return _coerce(key, args[0], value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool, float) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def _check_choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")
