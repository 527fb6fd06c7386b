"""A study's shared teachers: trained once (the demo's recipes), reused by every row, and checked.

A teacher is one unit: an interrupted build starts again, a finished file (written atomically) is
kept. The check is k-NN top-1 (k=20, T=0.07) of the teacher's CLS features and of raw pixels with the
teacher's own training images as the bank and the last `heldout_images` training images as queries:
a supervised teacher that does not beat pixels there is no real example of its kind. The test split
is never read here.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset
from torchvision import transforms

from ..config import to_dict
from ..data.build import build_dataset
from ..data.subset import LIMIT_SEED
from ..demo.teachers import train_mae_teacher, train_supervised_teacher
from ..evaluation.features import Transformed, embed_dataset, extract_features
from ..evaluation.knn import knn_classify
from ..files import load_model, save_model_file
from ..models.load import create_vit
from . import curve
from .cell import analysis_settings, digest, file_sha
from .controlled import make_controlled
from .spec import TEACHER_REF, StudyError, TeacherKind, base_config, run_rows, shared_teacher_model, teacher_file
from .splits import check_disjoint, first, last


def recipe(spec: DictConfig, name: str, base: DictConfig) -> tuple[SimpleNamespace, DictConfig]:
    """The demo-style settings the demo's teacher trainers read, and the data config of their loader."""
    t = spec.teachers[name]
    arch, kwargs = shared_teacher_model(spec, name, base)
    demo = SimpleNamespace(
        arch=arch,
        vit_kwargs=kwargs,
        batch=t.batch,
        seed=t.seed,
        teacher_epochs=t.epochs,
        supervised_blr=t.blr,
        mae_epochs=t.epochs,
        mae_blr=t.blr,
        mean=list(base.student.mean),
        std=list(base.student.std),
        pos_embed=t.pos_embed,
        mask_ratio=t.mask_ratio,
        decoder_depth=t.decoder_depth,
    )
    data = OmegaConf.merge(base.data, {"limit": teacher_images(t, base)})
    if t.crop_scale is not None:
        data.crop_scale = t.crop_scale
    return demo, data


def teacher_images(t: DictConfig, base: DictConfig) -> int:
    return t.images or base.data.limit


LOADER_ONLY = (
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "prefetch_factor",
    "max_bad_fraction",
    "bad_check_every",
    "max_image_pixels",
)  # data settings that do not change the images a teacher sees


ADDED_DEFAULTS = {
    "pos_embed": "learned",
    "mask_ratio": 0.75,
    "decoder_depth": 2,
}  # settings added since records were first kept, recorded only when
# changed, so a teacher of an older record is still recognised


NOT_WEIGHTS = ("must_beat_pixels", "curve_every", "curve_images")  # settings that do not change the weights


def recipe_record(spec: DictConfig, name: str, base: DictConfig) -> dict:
    """What decides a shared teacher's weights: its recipe, model, pixel statistics and images."""
    demo, data = recipe(spec, name, base)
    teacher = {
        k: v
        for k, v in OmegaConf.to_container(spec.teachers[name], enum_to_str=True).items()
        if k not in NOT_WEIGHTS and not (k in ADDED_DEFAULTS and ADDED_DEFAULTS[k] == v)
    }
    record = {
        "teacher": teacher,
        "model": [demo.arch, demo.vit_kwargs],
        "mean_std": [demo.mean, demo.std],
        "data": {k: v for k, v in to_dict(data).items() if k not in LOADER_ONLY},
    }
    return json.loads(json.dumps(record, default=str))


def build_teacher(spec: DictConfig, name: str, base: DictConfig, log=print) -> Path:
    """The teacher file, trained unless one of the same recipe exists (recorded beside it); a file of
    another recipe is refused, never silently reused."""
    path, record = teacher_file(spec, name), recipe_record(spec, name, base)
    recorded = path.with_suffix(".recipe.json")
    if path.is_file():
        if not recorded.is_file():
            log(
                f"[study] teacher {name}: {path} has no recipe record (made before records were kept): reused "
                f"as it is; delete it to retrain it if teachers.{name} changed"
            )
        elif json.loads(recorded.read_text()) != record:
            raise StudyError(
                f"teacher {name}: {path} was trained with another recipe (teachers.{name} or the base "
                f"data changed since); delete {path} and {path.with_suffix('')}.*.json to retrain it"
            )
        log(f"[study] teacher {name}: {path} exists, reused")
        return path
    demo, data = recipe(spec, name, base)
    stale = [path.with_suffix(".check.json"), path.parent / "analysis" / "analysis.json"]  # of an earlier file
    if not recorded.is_file() or json.loads(recorded.read_text()) != record:
        stale += [path.with_suffix(".state.pt"), path.with_suffix(".curve.json")]  # another recipe's partial run
    for file in stale:
        file.unlink(missing_ok=True)
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(record, indent=2))
    dataset = build_dataset(data) if spec.teachers[name].kind is not TeacherKind.controlled else []
    torch.manual_seed(spec.teachers[name].seed)  # the initial weights: the same file whichever process builds it
    log(
        f"[study] teacher {name}: {spec.teachers[name].kind.value}, {len(dataset)} images, {demo.teacher_epochs} epochs"
    )
    if spec.teachers[name].kind is TeacherKind.supervised:
        return train_supervised_teacher(demo, data, dataset, path)
    if spec.teachers[name].kind is TeacherKind.controlled:
        encoder = make_controlled(
            create_vit(demo.arch, **demo.vit_kwargs), list(spec.teachers[name].head_betas), seed=demo.seed
        )
        return save_model_file(encoder, demo.arch, demo.vit_kwargs, path, demo.mean, demo.std)
    return train_mae_teacher(
        demo,
        data,
        dataset,
        path,
        state=path.with_suffix(".state.pt"),
        after_epoch=curve_hook(spec, name, base, path, log),
    )


def curve_hook(spec: DictConfig, name: str, base: DictConfig, path: Path, log):
    """The teacher's per-head distance curve (study/curve.py), on held-out training images, or None."""
    t = spec.teachers[name]
    if not t.curve_every:
        return None
    train = build_dataset(OmegaConf.merge(base.data, {"limit": 0}))
    check_disjoint(len(train), {f"teachers.{name}.images": teacher_images(t, base)}, t.curve_images)
    images = curve.curve_images(train, last(len(train), t.curve_images), base.student.mean, base.student.std)
    return lambda encoder: curve.recorder(encoder, images, path.with_suffix(".curve.json"), t.curve_every, log)


class Pixels:
    """Images resized to side x side, grayscale, flattened to [0, 1]: the raw-pixel k-NN baseline."""

    def __init__(self, side: int):
        self.transform = transforms.Compose(
            [transforms.Grayscale(), transforms.Resize((side, side)), transforms.ToTensor()]
        )

    def __call__(self, image):
        return self.transform(image).flatten()


def heldout_check(model, train_ds, n_bank: int, n_heldout: int, side: int) -> dict:
    """k-NN top-1 of the model and of raw pixels; bank: the teacher's own training images (splits.first),
    queries: the held-out end of the order (splits.last), seen by no model in training."""
    size = len(train_ds)
    check_disjoint(size, {"the teacher's images": n_bank}, n_heldout)
    bank, held = Subset(train_ds, first(size, n_bank)), Subset(train_ds, last(size, n_heldout))
    feats = knn_classify(*extract_features(model, bank), *extract_features(model, held))
    pixel = Pixels(side)
    flat = lambda ds: embed_dataset(lambda x: x, Transformed(ds, pixel), device="cpu")  # noqa: E731
    pixels = knn_classify(*flat(bank), *flat(held))
    return {
        "knn_top1": feats["top1"],
        "pixels_knn_top1": pixels["top1"],
        "bank": len(bank),
        "heldout": n_heldout,
        "split_seed": LIMIT_SEED,
    }


def used_teachers(spec: DictConfig) -> list[str]:
    """The shared teachers the rows run (and the claims) name; others are built only with `--teacher`."""
    refs = json.dumps([OmegaConf.to_container(spec.rows[r]) for r in run_rows(spec)])
    roles = [spec.claims.sup_teacher, spec.claims.mae_teacher] if spec.claims is not None else []
    return [n for n in spec.teachers if f'"{TEACHER_REF}{n}"' in refs or n in roles]


def build_teachers(spec: DictConfig, train_ds, log=print) -> dict:
    """Every shared teacher the study uses, built (or reused) and checked; checks are cached beside the files."""
    base, out = base_config(spec), {}
    for name in used_teachers(spec):
        path = build_teacher(spec, name, base, log)
        check_path = path.with_suffix(".check.json")
        if not check_path.is_file():
            n_bank = min(teacher_images(spec.teachers[name], base) or len(train_ds), len(train_ds))
            check = heldout_check(
                load_model(str(path)), train_ds, n_bank, spec.evaluate.heldout_images, base.data.img_size
            )
            check_path.write_text(json.dumps({**check, "kind": spec.teachers[name].kind.value}, indent=2))
        out[name] = {"file": str(path), **json.loads(check_path.read_text())}
        log(
            f"[study] teacher {name}: k-NN top-1 on held-out training images {out[name]['knn_top1']:.2f} "
            f"(raw pixels {out[name]['pixels_knn_top1']:.2f})"
        )
        if spec.teachers[name].must_beat_pixels:
            require_beats_pixels(name, out[name], path)
    return out


def require_beats_pixels(name: str, check: dict, path: Path) -> None:
    """Hours of students distilled from a teacher weaker than pixels would test nothing."""
    if check["knn_top1"] <= check["pixels_knn_top1"]:
        raise StudyError(
            f"teacher {name}: k-NN top-1 {check['knn_top1']:.2f} on held-out training images does not "
            f"beat raw pixels ({check['pixels_knn_top1']:.2f}); change its recipe (teachers.{name}) "
            f"and delete {path}"
        )


def teacher_analysis_dir(spec: DictConfig, teachers: dict) -> Path:
    """The shared teachers' analysis, keyed by its settings and the teacher files' SHA-256."""
    key = digest(
        {
            "settings": analysis_settings(spec),
            "files": {n: file_sha(t["file"], Path(t["file"]).stat().st_mtime_ns) for n, t in teachers.items()},
        }
    )
    return teacher_file(spec, next(iter(teachers))).parent / f"analysis-{key}"
