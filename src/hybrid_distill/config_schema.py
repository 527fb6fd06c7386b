"""The config's types: enums and dataclasses, with every default in one place (STYLE rule 6, 18).

Defaults are the paper's ViT-B setting (section 4.1) with dBOT / FD defaults where the paper is
silent; each such field names its source. Teachers are listed by each experiment file. This module
imports nothing of the package, so every other module can take its config types from here; the
loader (`config.py`) and the checker (`config_check.py`) build on it.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class Strategy(str, Enum):
    progressive = "progressive"  # paper 3.2, eq. 4
    last = "last"  # one selection after the picker's final block, to the same count (Table 8 "direct")
    random = "random"
    none = "none"


class RelationKind(str, Enum):
    """What a teacher gives at each of its relation blocks (paper eq. 2; Tables 5/6 "T'_m")."""

    raw = "raw"  # R = q k^T per head, unscaled, as eq. 2 writes it (default)
    scaled = "scaled"  # q k^T * hd^-0.5, the logits the softmax sees: 8x smaller at head dim 64
    softmax = "softmax"  # attention probabilities
    msa = "msa"  # MSA^i = Softmax(R / sqrt(hd)) V per head, before the output projection (eq. 2)
    features = "features"  # T_m^i: the block's output tokens, through their own student head (eq. 2)


class RelationHeads(str, Enum):
    per_head = "per_head"
    head_mean = "head_mean"  # for students whose head count differs from the teacher's


class TargetNorm(str, Enum):
    """How a teacher's feature targets are normalised across tokens (models/phis.py)."""

    none = "none"  # as they are (after final_norm and whiten)
    phis = "phis"  # PHI-S: Hadamard-rotated PCA basis, one scale (Ranzinger et al. 2024, RADIOv2.5)
    standard = "standard"  # per-channel mean and std


class DecoderKind(str, Enum):
    """What predicts the teacher features from the student encoder's tokens (`models.decoder.Decoder` is the
    `blocks` module)."""

    none = "none"  # the encoder's tokens are the prediction: needs equal student and teacher widths
    linear = "linear"  # one Linear(D_s -> D_t) per feature teacher (FD's 1x1 conv; the default)
    blocks = "blocks"  # dBOT's asymmetric decoder: decoder_depth timm Blocks, then a Linear (paper 2.2, fig. 1)


class MaskStyle(str, Enum):
    none = "none"
    simmim = "simmim"  # mask tokens in the encoder's input, loss on masked tokens (paper 2.4, SimMIM)
    dbot = "dbot"  # the encoder sees visible tokens, mask tokens enter the decoder (paper B.2, dBOT)


class Amp(str, Enum):
    auto = "auto"  # bf16 on CUDA, fp32 on CPU
    bf16 = "bf16"
    fp16 = "fp16"
    none = "none"


class TeacherPrecision(str, Enum):
    auto = "auto"  # bf16 teachers when the student trains under bf16 autocast, else fp32
    fp32 = "fp32"
    bf16 = "bf16"
    fp8 = "fp8"  # e4m3 matrix products in the teachers' blocks (sm_89+ GPUs), bf16 elsewhere


class Decode(str, Enum):
    pil = "pil"  # decode, crop and flip in the loader's workers (PIL)
    gpu = "gpu"  # workers send the JPEG bytes; decode (nvJPEG), crop and flip on the GPU


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | tar | wds | fashion_mnist | synthetic | other timm reader spec ('hfds/...')
    path: str | None = None  # root folder (train split under it, or the split folder itself); wds: shard urls
    num_samples: int = 0  # wds: samples in the shards (defines the epoch length)
    split: str = "train"
    img_size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # dBOT / MAE RandomResizedCrop
    hflip: float = 0.5
    interpolation: str = "bicubic"
    limit: int = 0  # use N samples drawn at random with a fixed seed, every class kept (0: all)
    synthetic_size: int = 512  # images in the synthetic dataset
    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    max_bad_fraction: float = 0.1  # stop when more of an epoch's samples than this are unreadable
    bad_check_every: int = 50  # steps between checks of the unreadable fraction (and at each epoch's end)
    max_image_pixels: int = 89_478_485  # larger images count as unreadable (Pillow's decompression-bomb limit)
    decode: Decode = Decode.pil  # gpu: JPEG folders on CUDA only; the same crops from the same per-sample seeds


@dataclass
class MaskReconConfig:
    """Mask feature reconstruction (paper 2.4, B.2): the feature teachers' targets, predicted at masked tokens."""

    style: MaskStyle = MaskStyle.none
    ratio: float | None = None  # None: 0.6 simmim (SimMIM's ViT config), 0.75 dbot (dBOT main_pretrain.py)
    patch: int | None = None  # mask cell in pixels; None: 32 simmim (SimMIM), the model patch dbot (dBOT)


@dataclass
class StudentConfig:
    arch: str = "vit_base_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (img_size, patch_size, depth, ...)
    drop_path: float = 0.2  # dBOT --drop_path for ViT-B
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    decoder: DecoderKind = DecoderKind.linear  # what predicts the teacher features from the encoder's tokens
    decoder_depth: int = 8  # blocks of the `blocks` decoder (dBOT mae_vit_*_dec512d8b; paper fig. 9: 1, 4, 8)
    mask_recon: MaskReconConfig = field(default_factory=MaskReconConfig)
    fd_encoder: bool = False  # FD's encoder: layer scale 0.1, shared relative position bias, no absolute positions


@dataclass
class TeacherConfig:
    arch: str = "???"  # timm name
    weights: str = "pretrained"  # 'pretrained' (timm / HF hub), 'random' (tests only), or a file path
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    match_grid: bool = True  # resize the input (pos-embed interpolated) so the token grid equals the student's
    # with match_grid=false: the teacher sees its own input size, its feature map resized to the student's grid;
    # off by default: its students scored 5 k-NN points below match_grid's (docs/grid_compare.py)
    interpolate_features: bool = False
    resample: bool = False  # let timm resample a weights file's patch kernel of another size (else refused)
    weight: float = 1.0  # multiplies every loss part of this teacher (paper alpha for the MIM teacher)
    features: bool = False  # distil this teacher's features at feature_block (paper eq. 3, T_c)
    feature_block: int = -1  # -1: last block; another block is matched at its student block, own head
    final_norm: bool = True  # teacher's own final norm on a last-block target (FD PRED_FEAT_AFTERNORM)
    whiten: bool = True  # per-token LayerNorm without affine on feature targets (FD ln_tgt)
    normalize: TargetNorm = TargetNorm.none  # phis | standard: statistics of the first batches, in place of whiten
    relation_blocks: list[int] = field(default_factory=list)  # e.g. [-3, -2]: paper's layers L-2, L-1
    # eq. 2's R = Q K^T; `scaled` is 8x smaller at head dim 64, which moves the balance alpha = 1 was set for
    relation_kind: RelationKind = RelationKind.raw
    relation_heads: RelationHeads = RelationHeads.per_head
    # teacher block (as written above) -> student block that matches it; unlisted: the same relative
    # depth, student block floor((i + 1) * S / T) - 1 (identity at equal depths)
    student_blocks: dict[int, int] = field(default_factory=dict)


@dataclass
class MaskingConfig:
    teacher: str | None = None  # name of the teacher that picks tokens (the MIM teacher); None: keep all
    strategy: Strategy = Strategy.progressive
    keep_ratio: float = 0.7  # per selection: 196 -> 137 -> 95 -> 66 (PCAE)
    blocks: list[int] | None = None  # None: [0, L/3, 2L/3] (paper 4.1)
    prune_teacher: bool = False  # run the MIM teacher's later blocks on kept tokens only (PCAE style)


@dataclass
class LossConfig:
    beta: float = 2.0  # smooth-L1 beta (dBOT, FD)


@dataclass
class OptimConfig:
    batch_size: int = 1024  # global batch (paper 4.1)
    blr: float = 1.5e-4  # lr = blr * batch_size / 256 = 6e-4 (paper 4.1)
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # dBOT main_pretrain.py
    warmup_epochs: float = 40.0  # dBOT
    min_lr: float = 0.0
    clip_grad: float = 3.0  # dBOT
    accum_steps: int = 1


@dataclass
class TrainConfig:
    epochs: int = 300  # paper 4.1, ViT-B on IN-1K
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    device: str = "auto"  # auto | cpu | cuda
    amp: Amp = Amp.auto
    teacher_precision: TeacherPrecision = TeacherPrecision.auto  # fp8: targets within ~5% of bf16 (bench --fp8)
    activation_checkpointing: bool = False  # recompute student blocks in backward (ViT-L/H memory)
    fsdp: bool = False  # shard the student with FSDP2 (fully_shard per block) instead of DDP, for ViT-L/H
    compile: bool = False  # torch.compile the student and each teacher in place (first steps compile; bench)
    log_every: int = 20
    ckpt_every_steps: int = 0  # 0: once per epoch
    keep_checkpoints: int = 3
    monitor_every: int = 0  # attention distance / NMI of the student every N steps (0: off)
    monitor_images: int = 16  # size of the fixed probe batch (the first images of the dataset)
    max_nonfinite_steps: int = 10  # save and stop after this many skipped non-finite steps in a row
    good_state_every: int = 100  # steps between in-memory copies of the state saved when non-finite steps stop
    # a run (two full copies of student + optimiser in host memory; 0: off, the current state is saved)
    progress: bool = True
    tensorboard: bool = True
    trackers: list[str] = field(default_factory=list)  # wandb and / or mlflow, fed what metrics.jsonl gets


@dataclass
class Config:
    name: str = "hybrid"
    output_dir: str = "runs"  # the run goes to output_dir/name
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: dict[str, TeacherConfig] = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A config problem, said in one line with the fix; every command turns it into exit code 2."""
