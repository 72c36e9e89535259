"""One typed config for the whole kit: dataclass fields are also the notebook parameter names and CLI keys."""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcls.coerce import coerce
from mcls.errors import UserError

PRESETS = Path(__file__).parent / "presets"
# How external face-age photos train (external_training); mcls.train.run.fit_fold acts on each.
EXTERNAL_TRAINING = ("pretrain", "joint", "both")
PRETRAINS, JOINS = ("pretrain", "both"), ("joint", "both")  # the choices that pretrain, and that join the batches


class ConfigError(UserError):
    """Raised with every problem found in a config, not only the first."""


def one_of(default: str, *others: str):
    """A key whose value is one of a few names, the first the default: its valid choices live beside the field
    (the registries that build them, in model/, runtime/ and train/, are checked against these by the tests)."""
    return field(default=default, metadata={"choices": (default, *others)})


def serving(default):
    """A key that changes how a trained run predicts (mcls.infer.serving); any other key means nothing to
    prediction."""
    return field(default=default, metadata={"role": "serving"})


def placement(default):
    """A key that says where a run's data and caches are and what it runs on, not what it learns: a resumed run
    takes it as given (the data's fingerprint still has to match), while any other key keeps its saved value."""
    return field(default=default, metadata={"role": "placement"})


# The heads whose mask task has a backbone of its own (mcls.model.classifier.TASK_BACKBONES: its size, view and
# mixing are its own).
MASK_BACKBONE_HEADS = ("mask_apart", "separate")


# What the mask-task keys are on a model without a mask backbone of its own (heads=multi or single): setting such
# heads on a config with a mask backbone takes these for the keys not given with it, since the defaults' values act
# only on the mask task's own backbone; setting heads with a mask backbone on one without takes the package's
# defaults back. One backbone, three heads and these keys are the defaults until 2026-12-03.
ONE_BACKBONE = {"mask_backbone": "", "mask_size": 0, "mix": "none", "mix_tasks": "all", "mask_view": "none"}

# The keys that shape how external data trains: they act only with external_data.
EXTERNAL_KEYS = ("external_min_age", "external_epochs", "external_threshold", "external_training", "external_share")


@dataclass
class Config:
    # --- data ---
    data_dir: str = placement("data/sample")
    relabel_file: str = ""  # CSV of relabel decisions applied on load; "" = none
    relabel_decisions: str = ""  # a reviewed queue CSV (decision column) that notebook 01 appends headless
    age_bounds: list[int] = field(default_factory=lambda: [30, 60])  # band edges: <30, 30-59, >=60
    train_old_age: int = 60  # training-only edge of the oldest band (58/59 trick); never used for validation
    near_edge_drop: int = 0  # training drops ages this many years below each edge (3: 27-29 and 57-59); 0 = none
    on_bad_image: str = one_of("error", "skip")
    # a photo whose header claims more is refused before decoding (a "decompression bomb"); Pillow's own cap is 178
    max_image_megapixels: float = 64.0
    crop: str = one_of("none", "mtcnn")  # mtcnn: face crops, cached; prediction applies the run's crop too
    crop_margin: float = 0.1  # crop = face box + this fraction of its size on every side ...
    crop_chin: float = 0.2  # ... and this much more below, so a mask pulled down to the chin stays in
    crop_min_confidence: float = 0.9  # weaker detections count as no face
    crop_fallback: float = 0.8  # no face: centred square, this fraction of the shorter side
    crop_cache: str = placement(".cache/mcls/crops")  # detections (and face descriptors) cached by image content; "" = none
    image_cache: str = placement(".cache/mcls/images")  # decoded arrays keyed by files, size and crop; "" = decode every run
    # --- folds ---
    n_folds: int = 5
    fold: int = 0  # validation fold to train against; -1 trains every fold
    seed: int = 42  # the fold split, and training's randomness unless train_seed is set
    train_seed: int = -1  # >= 0: initialisation, order and augmentation from this seed, folds still from `seed`
    # --- model ---
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = "offline"  # offline | timm | none | path to a state_dict file
    # mask_apart: the mask task in a small backbone of its own (reframed, left/right cut), gender and age sharing
    # `backbone`; multi: one backbone, three heads; single: one 18-way head; separate: one backbone per task
    heads: str = one_of("mask_apart", "multi", "single", "separate")
    mask_backbone: str = "mobilenetv2_100"  # heads=mask_apart | separate: the mask task's backbone ("" = `backbone`)
    mask_size: int = 112  # heads=mask_apart | separate: px the mask task's backbone sees (0 = img_size)
    img_size: int = 160
    drop_rate: float = 0.2
    age_head: str = one_of("band", "dist", "both")  # 3-way | exact-age distribution, banded | their average
    age_sigma: float = 3.0  # years: spread of the exact-age target distribution
    # --- loss ---
    loss: str = one_of("ce", "weighted_ce", "focal", "label_smoothing", "f1")
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])  # mask, gender, age
    label_smoothing: float = 0.1
    focal_gamma: float = 2.0
    # --- optimisation ---
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    patience: int = 3  # early stopping: epochs without a better validation macro F1
    augment: str = one_of("light", "none", "strong", "robust")  # robust: strong + mask recolour, chin cuts, low light
    sampler: str = one_of("uniform", "balanced")  # balanced draws gender x age-band cells equally often
    wear_per_person: int = 2  # of each person's 5 correctly-worn photos, how many an epoch trains on (redrawn)
    # vcutmix: left/right halves of two faces (_fixed: cut at 46-54 %)
    mix: str = one_of("vcutmix_fixed", "none", "vcutmix", "cutmix", "mixup")
    mix_prob: float = 0.5  # share of batches mixed
    mix_alpha: float = 1.0  # Beta(alpha, alpha) of the mixing ratio
    mix_tasks: str = one_of("mask", "all")  # mask: a mask backbone of its own, only it sees mixed batches
    # a mask backbone of its own sees faces shrunk and moved in frame; _lowres also blurs half of them
    mask_view: str = one_of("reframe", "none", "reframe_lowres")
    ema_decay: float = 0.995  # moving average of weights, validated and saved; its decay warms up to this; 0 = off
    # eval: unlabelled eval images join training; validation: measuring only
    pseudo_label: str = one_of("none", "eval", "validation")
    pseudo_run: str = ""  # the first-stage run whose fold-k model labels them for fold k
    pseudo_threshold: float = 0.9  # minimum probability of the predicted class to keep a pseudo label
    # external face-age photos (a folder of UTKFace-named files or a path,age,gender CSV; "" = none): those that
    # pass the leak guard train the gender/age tasks as external_training says (docs/external-data.md)
    external_data: str = ""
    # pretrain: a backbone pretrained on them once starts every fold's gender/age tasks (mcls.train.pretrain);
    # joint: they join every fold's batches, their mask loss ignored (mcls.train.joint); both: the two together
    external_training: str = one_of(*EXTERNAL_TRAINING)
    external_share: float = 0.5  # joint | both: external faces an epoch draws, per competition row it trains on
    external_min_age: int = 18  # external faces younger than this are left out (the competition's persons are adults)
    # the leak guard: external faces closer than this to a competition face (unit-length dlib descriptors) are one of
    # its persons and dropped; chosen on this data's distances (docs/external-data.md, bench/leak_threshold.py)
    external_threshold: float = 0.3
    external_epochs: int = 5  # pretrain | both: epochs of the one-off pretraining on the external faces
    pretrain_cache: str = placement(".cache/mcls/pretrained")  # pretrained backbones keyed by their inputs; "" = the run's only
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    # --- runtime ---
    device: str = placement("auto")  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision, used on CUDA only
    # auto: bfloat16 where the GPU has it, else float16 + loss scaling
    amp_dtype: str = one_of("auto", "bfloat16", "float16")
    channels_last: str = one_of("auto", "on", "off")  # auto: on (faster on CUDA and on CPU: bench/results/profile_fold.md)
    num_workers: int = placement(0)
    compile: bool = False  # torch.compile the training model (needs a C++ compiler on CPU; slow first epoch)
    # --- run ---
    run_dir: str = ""  # "" = runs/<timestamp>
    members: list[str] = field(default_factory=list)  # presets / YAML overrides: more models on these folds, averaged
    # Off by default, the simpler option: on the default's 5 folds neither told itself apart in macro F1
    # (bench/results/decisions.md; the rule in docs/quality.md). Both are one key away.
    tta: bool = serving(False)  # horizontal-flip test-time augmentation for prediction
    person_consistent: bool = serving(False)  # share gender/age across images grouped as one person (no ids used)
    group_threshold: float = serving(0.4)  # cosine distance under which upper-face embeddings join one person
    face_weight: float = serving(0.0)  # weight of the dlib face expert in the gender and age heads (0 = off; >0 fits one per fold)
    calibrate_age: bool = serving(False)  # fit age-band priors on out-of-fold predictions (2+ folds) and apply them
    smoke: bool = False  # tiny run for tests and first tries: 1 epoch, small images
    compare_with: str = ""  # notebook 05: a teammate's submission, probabilities or run to show disagreements with
    reference_run: str = ""  # notebook 05: a run folder this run is judged against (mcls compare: paired intervals)
    tracker: str = one_of("none", "mlflow")
    tracking_uri: str = ""  # MLflow server (e.g. http://host:5000); "" = a local store at <runs>/mlruns
    # --- inspection (notebook 04, `mcls cam`) ---
    cam_method: str = "gradcam"  # any name in mcls.analysis.cam.METHODS
    cam_images: int = 16  # images per GradCAM grid

    # ------------------------------------------------------------------ helpers
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """Builds a config, checking every key and type; raises ConfigError listing all problems."""
        cfg = cls()
        return cfg.updated(values, source=source)

    def updated(self, values: dict[str, Any], source: str = "overrides") -> "Config":
        """Returns a copy with `values` applied and type-checked."""
        hints = typing.get_type_hints(type(self))
        known = set(self.field_names())
        problems = []
        new = dataclasses.replace(self)
        choices = key_choices()
        for key, value in (values or {}).items():
            if key not in known:
                problems.append(f"{source}: unknown key {key!r} (valid keys: {', '.join(sorted(known))})")
                continue
            if isinstance(value, bool) and {"on", "off"} <= set(choices.get(key, ())):
                value = "on" if value else "off"  # YAML 1.1 reads a bare on/off (CLI or file) as true/false
            try:
                setattr(new, key, coerce(value, hints[key]))
            except (TypeError, ValueError) as err:
                problems.append(f"{source}: {key}={value!r}: {err}")
        if "heads" in (values or {}) and has_mask_backbone(new.heads) != has_mask_backbone(self.heads):
            # heads of the other kind: the mask-task keys not given with them take that kind's values, both ways
            own = {k: f.default for f in dataclasses.fields(Config) if (k := f.name) in ONE_BACKBONE}
            for key, value in (own if has_mask_backbone(new.heads) else ONE_BACKBONE).items():
                if key not in values:
                    setattr(new, key, value)
        problems += [f"{source}: {p}" for p in new._value_problems()] if not problems else []
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return new

    def _value_problems(self) -> list[str]:
        choices = key_choices()
        out = [f"{k}={getattr(self, k)!r} is not one of {v}" for k, v in choices.items() if getattr(self, k) not in v]
        if len(self.age_bounds) != 2 or self.age_bounds[0] >= self.age_bounds[1]:
            out.append(f"age_bounds={self.age_bounds} must be two increasing ages, e.g. [30, 60]")
        elif not self.age_bounds[0] < self.train_old_age <= self.age_bounds[1]:
            out.append(f"train_old_age={self.train_old_age} must lie in ({self.age_bounds[0]}, {self.age_bounds[1]}]")
        if not 0 <= self.near_edge_drop < min(self.age_bounds[0], 20):
            out.append(f"near_edge_drop={self.near_edge_drop} must be in 0..{min(self.age_bounds[0], 20) - 1} years")
        if len(self.loss_weights) != 3:
            out.append(f"loss_weights={self.loss_weights} needs three weights (mask, gender, age)")
        if self.n_folds < 2:
            out.append(f"n_folds={self.n_folds} must be at least 2")
        if not -1 <= self.fold < self.n_folds:
            out.append(f"fold={self.fold} must be -1 (all) or in 0..{self.n_folds - 1}")
        for key in ("epochs", "batch_size", "patience", "cam_images"):
            if getattr(self, key) < 1:
                out.append(f"{key}={getattr(self, key)} must be at least 1")
        if not 0 < self.max_image_megapixels <= 178:
            out.append(f"max_image_megapixels={self.max_image_megapixels} must be in (0, 178]: Pillow itself refuses "
                       "larger images")
        if self.img_size < 32:  # five stride-2 stages leave nothing of a smaller image
            out.append(f"img_size={self.img_size} must be at least 32 pixels")
        if not self.lr > 0:  # lr=0 would train a whole run whose weights never move
            out.append(f"lr={self.lr} must be positive (e.g. 1e-3)")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            out.append(f"weight_decay={self.weight_decay} and warmup_epochs={self.warmup_epochs} must be >= 0")
        if not 0 <= self.drop_rate < 1 or not 0 <= self.label_smoothing < 1 or self.focal_gamma < 0:
            out.append(f"drop_rate={self.drop_rate} and label_smoothing={self.label_smoothing} must be in [0, 1), "
                       f"focal_gamma={self.focal_gamma} >= 0")
        if any(w < 0 for w in self.loss_weights) or not any(w > 0 for w in self.loss_weights):
            out.append(f"loss_weights={self.loss_weights} must be >= 0 with at least one positive")
        if not 0 < self.group_threshold <= 2 or not 0 <= self.pseudo_threshold <= 1:
            out.append(f"group_threshold={self.group_threshold} must be in (0, 2] (a cosine distance), "
                       f"pseudo_threshold={self.pseudo_threshold} in [0, 1]")
        if not 0 <= self.face_weight <= 1:
            out.append(f"face_weight={self.face_weight} must be in [0, 1] (0 = no face expert)")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            out.append(f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.heads == "single" and self.age_head != "band":
            out.append(f"age_head={self.age_head!r} needs three heads (heads='multi', 'separate' or 'mask_apart')")
        own_mask = has_mask_backbone(self.heads)
        if not own_mask and (self.mask_backbone or self.mask_size):
            out.append(f"mask_backbone={self.mask_backbone!r} / mask_size={self.mask_size} act only with a mask "
                       f"backbone of its own (heads={self.heads!r}); set heads=mask_apart or separate, or leave them "
                       f"at '' / 0")
        if self.mix_tasks != "all" and (not own_mask or self.mix == "none"):
            out.append(f"mix_tasks={self.mix_tasks!r} needs a mask backbone of its own (heads='mask_apart' or "
                       f"'separate') and a mix (heads={self.heads!r}, mix={self.mix!r}): a shared backbone sees one "
                       f"batch; set both or leave mix_tasks='all'")
        if self.mask_view != "none" and not own_mask:
            out.append(f"mask_view={self.mask_view!r} needs a mask backbone of its own (heads='mask_apart' or "
                       f"'separate'; heads={self.heads!r}): a shared backbone sees one view for every task; set "
                       f"heads=mask_apart or leave mask_view='none'")
        if self.mask_size < 0:
            out.append(f"mask_size={self.mask_size} must be >= 0 (0 = img_size)")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.mix_prob <= 1 or self.mix_alpha <= 0 or self.age_sigma <= 0:
            out.append(f"ema_decay={self.ema_decay} must be in [0, 1), mix_prob={self.mix_prob} in [0, 1], "
                       f"mix_alpha={self.mix_alpha} and age_sigma={self.age_sigma} positive")
        if self.pseudo_label != "none" and not self.pseudo_run:
            out.append(f"pseudo_label={self.pseudo_label!r} needs pseudo_run (the run whose models label the images)")
        if not 1 <= self.wear_per_person <= 5:
            out.append(f"wear_per_person={self.wear_per_person} must be in 1..5")
        if self.num_workers < 0:
            out.append(f"num_workers={self.num_workers} must be >= 0")
        fields = {f.name: f.default for f in dataclasses.fields(self)}
        external = {k: getattr(self, k) for k in EXTERNAL_KEYS if getattr(self, k) != fields[k]}
        if external and not self.external_data:
            out.append(f"{', '.join(f'{k}={v!r}' for k, v in external.items())} act only with external_data (a "
                       f"folder or CSV of external face-age photos); set it or leave them at their defaults")
        if not 0 <= self.external_min_age <= 120 or self.external_epochs < 1 or not 0 < self.external_threshold < 2:
            out.append(f"external_min_age={self.external_min_age} must be in 0..120, external_epochs="
                       f"{self.external_epochs} at least 1 and external_threshold={self.external_threshold} in (0, 2)")
        if not 0 < self.external_share <= 10:
            out.append(f"external_share={self.external_share} must be in (0, 10] (external faces per competition row)")
        if self.external_training == "pretrain" and self.external_share != fields["external_share"]:
            out.append(f"external_share={self.external_share} acts only when external faces join the batches; set "
                       f"external_training=joint or both, or leave it at {fields['external_share']}")
        if self.external_training == "joint" and self.external_epochs != fields["external_epochs"]:
            out.append(f"external_epochs={self.external_epochs} acts only with pretraining; set external_training="
                       f"pretrain or both, or leave it at {fields['external_epochs']}")
        if self.external_data and self.external_training != "pretrain" and self.heads == "single":
            out.append(f"external_training={self.external_training!r} needs three heads (heads='mask_apart', 'multi' "
                       f"or 'separate'): an 18-way head cannot learn from a face without its mask state")
        if self.crop_margin < 0 or self.crop_chin < 0 or not 0 < self.crop_fallback <= 1:
            out.append(f"crop_margin={self.crop_margin} and crop_chin={self.crop_chin} must be >= 0, "
                       f"crop_fallback={self.crop_fallback} in (0, 1]")
        return out

    @property
    def training_seed(self) -> int:
        """What training's randomness is drawn from; a second model on the same folds differs only in train_seed."""
        return self.seed if self.train_seed < 0 else self.train_seed

    def resolved(self) -> "Config":
        """Applies the `smoke` switch: the same pipeline, tiny enough for tests and a first try."""
        if not self.smoke:
            return self
        # a derived value is set only where its key acts: the checks read a changed value as one the user gave
        pretrains = bool(self.external_data) and self.external_training in PRETRAINS
        return dataclasses.replace(self, epochs=min(self.epochs, 1), img_size=min(self.img_size, 64),
                                   mask_size=min(self.mask_size, 64), batch_size=min(self.batch_size, 16),
                                   patience=max(self.patience, 1),
                                   external_epochs=min(self.external_epochs, 1) if pretrains else self.external_epochs)

    # ------------------------------------------------------------------ YAML
    @classmethod
    def from_yaml(cls, path: str | Path) -> "Config":
        """A YAML file of config keys, or the name of a preset shipped in mcls/presets (e.g. "quality")."""
        path, values = read_yaml_keys(path)
        return cls.from_dict(values, source=str(path))

    @property
    def max_pixels(self) -> int:
        return int(self.max_image_megapixels * 10**6)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def has_mask_backbone(heads: str) -> bool:
    """Whether the mask task has a backbone of its own under `heads` (its size, view and mixing are its own)."""
    return heads in MASK_BACKBONE_HEADS


def key_choices() -> dict[str, tuple[str, ...]]:
    """{key: its valid values} for every key that takes one of a few names."""
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(Config) if "choices" in f.metadata}


def placement_keys() -> tuple[str, ...]:
    """The keys a resumed run takes as given (placement), in field order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("role") == "placement")


def serving_keys() -> tuple[str, ...]:
    """The keys that change how a trained run predicts, in field order."""
    return tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("role") == "serving")


def read_yaml_keys(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the file found, its mapping of config keys) for a YAML path or a preset name; keys are checked by the
    Config they are applied to."""
    path = Path(path)
    if not path.is_file() and (PRESETS / f"{path}.yaml").is_file():
        path = PRESETS / f"{path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(f.stem for f in PRESETS.glob("*.yaml")))
        raise ConfigError(f"{path}: config file not found (presets: {known})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return path, values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parses `key=value` strings; values are read as YAML scalars/lists (e.g. `age_bounds=[30,58]`)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Config from an optional YAML file plus overrides; this is the one entry point for CLI and notebooks."""
    cfg = Config.from_yaml(path) if path else Config()
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return cfg.updated(overrides or {})
