"""The trainer's stages declared: ``train``, ``prior`` and ``regress``, with their settings (the ``train``
section of params.yaml with one sub-section per method, ``prior``, ``regress``).

Declared apart from the code that runs them (loop.py, prior.py, regress.py) so that the CLI and the
params check read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ferdata.core.errors import UsageError
from ferdata.core.settings import Settings, option
from ferdata.core.stage import Stage

METHODS = ("ce", "ls", "ldlva", "arbex", "akt")
NEEDS_KNN = ("ldlva",)  # methods that read the VA table and the KNN graph
BACKBONES = ("small_cnn", "resnet18", "resnet18_tv", "resnet50_tv")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUGMENT_DEVICES = ("auto", "cpu", "cuda")
CALIBRATIONS = ("none", "temperature", "prior_temperature")  # see ferdata/train/calibrate.py
BACKBONE_HELP = (
    "small_cnn (CPU), resnet18 (GPU, from scratch), resnet18_tv or resnet50_tv (torchvision's, for pretrained weights)"
)


@dataclass(frozen=True)
class LSOptions(Settings):
    """``train.ls``: the label-smoothing baseline."""

    section = "train.ls"
    smoothing: float = option(0.1, "mass spread uniformly over the classes", min=0.0, below=1.0)


@dataclass(frozen=True)
class LDLVAOptions(Settings):
    """``train.ldlva``: see ferdata/train/methods/ldlva.py."""

    section = "train.ldlva"
    temperature: float = option(0.5, "temperature of the VA similarity exp(-L1 / T)", above=0.0)
    calib_floor: float = option(-1.3, "lower clamp of the calibration MLP's logit")
    init_logit: float = option(0.5, "initial logit of every sample's trust lambda (trust_init: constant)")
    trust_init: str = option(
        "constant",
        "where each trust lambda_i starts: constant (sigmoid(init_logit) for every face) or prior (the out-of-fold "
        "prior's probability of the face's given label; needs `ferdata prior`)",
        choices=("constant", "prior"),
    )
    lambda_lr: float = option(
        100.0, "learning rate of the per-sample trust (its own SGD); chosen on real faces, see ldlva.py", min=0.0
    )
    disc_weight: float = option(0.01, "weight of the discriminative (centre) loss", min=0.0)
    neighbour_mode: str = option(
        "bank", "bank (memory bank, CPU-friendly) or forward (re-forward the K neighbours)", choices=("bank", "forward")
    )
    soft_label: str = option(
        "prediction",
        "the training soft label: prediction (the trained network's distribution for the face) or target (t_i)",
        choices=("prediction", "target"),
    )
    neighbours: str = option(
        "network",
        "whose distributions p_j the neighbours bring: network (the network's own) or prior (the out-of-fold "
        "prior's, from models that never trained on the neighbour; needs `ferdata prior`)",
        choices=("network", "prior"),
    )


@dataclass(frozen=True)
class ARBExOptions(Settings):
    """``train.arbex``: see ferdata/train/methods/arbex.py."""

    section = "train.arbex"
    anchors_per_class: int = option(10, "learnable anchors per class", min=1)
    delta: float = option(1.0, "temperature of the anchor similarity", above=0.0)
    tokens: int = option(8, "tokens the embedding is cut into for self-attention", min=1)
    heads: int = option(4, "attention heads", min=1)
    anchor_weight: float = option(0.1, "weight of the anchor loss (anchors of different classes apart)", min=0.0)
    center_weight: float = option(1.0, "weight of the centre loss (embeddings to their class's anchors)", min=0.0)
    anchor_init: float = option(0.1, "sd of the anchors' random start (0: the official zeros)", min=0.0)
    head_layers: int = option(0, "hidden blocks of the primary head (3: the official MLP; 0: linear)", min=0, max=4)
    predict: str = option(
        "corrected",
        "prediction for val/test: corrected (the balanced distribution q) or primary (the head alone, as the "
        "official evaluation does)",
        choices=("primary", "corrected"),
    )
    confidence_grad: bool = option(
        False, "true: the NLL also trains the confidences that weigh p and the corrections (official code)"
    )


@dataclass(frozen=True)
class AKTOptions(Settings):
    """``train.akt``: see ferdata/train/methods/akt.py."""

    section = "train.akt"
    attention_weight: float = option(1.0, "weight of the attention-consistency loss", min=0.0)
    kl_weight: float = option(
        0.1, "weight of the symmetric KL between the branches (1 stalls training on real faces, see akt.py)", min=0.0
    )
    warmup_epochs: int = option(5, "epochs over which the adaptive targets are ramped in (0: from the start)", min=0)
    floor: float = option(
        0.5,
        "least share of the target given to the branches' fused belief where they agree, times their agreement "
        "(0: the target leaves the label only where they agree against it)",
        min=0.0,
        max=1.0,
    )
    adaptive: bool = option(
        True,
        "false: both branches learn the given label alone (with attention_weight and kl_weight 0, the matched "
        "control of AKT: two CE networks on the same weak and strong views, predicting together)",
    )


@dataclass(frozen=True)
class TrainSettings(Settings):
    """The ``train`` section of params.yaml."""

    section = "train"
    method: str = option("ce", "ce, ls, ldlva, arbex or akt", choices=METHODS)
    backbone: str = option("small_cnn", BACKBONE_HELP, choices=BACKBONES)
    epochs: int = option(20, "epochs (the plan must have at least as many)", min=1)
    batch_size: int = option(64, "faces per step and rank", min=1)
    lr: float = option(0.05, "peak learning rate (one-cycle schedule)", above=0.0)
    weight_decay: float = option(5e-4, "SGD weight decay", min=0.0)
    image_size: int = option(64, "faces are resized to this many pixels", min=8, max=1024)
    weights: str = option("", "local initial weights (.pt/.pth/.safetensors state dict), never downloaded")
    seed: int = option(0, "seed of the weights, augmentation and method state", min=0)
    workers: int = option(2, "DataLoader workers per rank (read, decode, augment); results do not depend on it", min=0)
    precision: str = option(
        "auto", "auto (bf16 or fp16 on CUDA, fp32 on a CPU), bf16, fp16 or fp32 (the backbone body)", choices=PRECISIONS
    )
    compile: bool = option(False, "torch.compile the backbone body")
    augment_device: str = option(
        "auto",
        "auto (the GPU when training on one), cpu (albumentations in the workers) or cuda (kornia)",
        choices=AUGMENT_DEVICES,
    )
    calibration: str = option(
        "prior_temperature",
        "after training, fit on the validation faces: prior_temperature (undo the plan's class balance and a "
        "temperature), temperature, or none; see ferdata/train/calibrate.py",
        choices=CALIBRATIONS,
    )
    ls: LSOptions = option(factory=LSOptions)
    ldlva: LDLVAOptions = option(factory=LDLVAOptions)
    arbex: ARBExOptions = option(factory=ARBExOptions)
    akt: AKTOptions = option(factory=AKTOptions)

    def method_options(self) -> Settings | None:
        """The options of the chosen method (ce has none)."""
        return getattr(self, self.method, None)

    @property
    def reads_prior(self) -> bool:
        """Whether the method reads the out-of-fold prior (LDLVA's neighbours from it)."""
        return self.method == "ldlva" and "prior" in (self.ldlva.neighbours, self.ldlva.trust_init)


@dataclass(frozen=True)
class PriorSettings(Settings):
    """The ``prior`` section of params.yaml; the fold models train with the ``train`` section otherwise."""

    section = "prior"
    folds: int = option(4, "subject-grouped folds; 0 writes an empty table (nothing needs the prior)", min=0)
    method: str = option("ce", "method of the fold models", choices=METHODS)
    epochs: int = option(12, "epochs of each fold model (the plan must have at least as many)", min=1)
    seed: int = option(0, "seed of the fold assignment", min=0)
    train: TrainSettings = option(factory=TrainSettings, param="train")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folds == 1:
            raise UsageError("prior.folds must be 0 (skip) or at least 2, got 1")

    def fold_model(self) -> TrainSettings:
        """The settings each fold model trains with: its posteriors keep the plan's balanced class prior
        (a temperature is fitted, the prior swap is not), since they are training targets and neighbours
        for models that train on the same balanced plan."""
        calibration = "temperature" if self.train.calibration != "none" else "none"
        return replace(self.train, method=self.method, epochs=self.epochs, calibration=calibration)


@dataclass(frozen=True)
class RegressSettings(Settings):
    """The ``regress`` section of params.yaml."""

    section = "regress"
    source: str = option("", "dataset folder with annotated VA to fit on (default: this one, out of fold)")
    backbone: str = option("small_cnn", BACKBONE_HELP, choices=BACKBONES)
    epochs: int = option(10, "epochs of each regressor", min=1)
    batch_size: int = option(64, "faces per step", min=1)
    lr: float = option(0.02, "peak learning rate (one-cycle schedule)", above=0.0)
    weight_decay: float = option(5e-4, "SGD weight decay", min=0.0)
    image_size: int = option(64, "faces are resized to this many pixels", min=8, max=1024)
    folds: int = option(4, "subject-grouped folds when fitting on this dataset", min=2)
    seed: int = option(0, "seed of the folds, weights and augmentation", min=0)
    workers: int = option(2, "DataLoader workers", min=0)
    precision: str = option(
        "auto", "auto (bf16 or fp16 on CUDA, fp32 on a CPU), bf16, fp16 or fp32", choices=PRECISIONS
    )


TRAIN = Stage(
    "train",
    "Train a model on the epoch plan (CUDA when present; DDP under torchrun).",
    "ferdata.train.loop",
    TrainSettings,
    reads=("labels", "plan", "shards"),
    may_read=("knn", "va", "prior"),  # prior: ldlva.neighbours prior
    writes=("learned", "train_log", "model"),
)
PRIOR = Stage(
    "prior",
    "Out-of-fold class posteriors for every labelled face (input of the circumplex VA source).",
    "ferdata.train.prior",
    PriorSettings,
    reads=("labels", "manifest", "plan", "shards"),
    may_read=("knn", "va"),
    writes=("prior",),
)
REGRESS = Stage(
    "regress",
    "Pseudo valence/arousal from a VA regressor (input of the va stage's regressor source).",
    "ferdata.train.regress",
    RegressSettings,
    reads=("manifest", "shard_index", "shards"),
    writes=("regressed_va",),
)
