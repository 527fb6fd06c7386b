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

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Subset
from torchvision import transforms

from ..config import to_dict
from ..data.build import build_dataset
from ..demo.teachers import train_mae_teacher, train_supervised_teacher
from ..evaluation.features import Transformed, embed_dataset, extract_features
from ..evaluation.knn import knn_classify
from ..files import load_model
from .spec import StudyError, TeacherKind, base_config, shared_teacher_model, teacher_file


def recipe(spec: DictConfig, name: str, base: DictConfig) -> tuple[SimpleNamespace, DictConfig]:
    """The demo-style settings the demo's teacher trainers read, and the data config of their loader."""
    t = spec.teachers[name]
    arch, kwargs = shared_teacher_model(spec, name, base)
    demo = SimpleNamespace(arch=arch, vit_kwargs=kwargs, batch=t.batch, seed=t.seed,
                           teacher_epochs=t.epochs, supervised_blr=t.blr, mae_epochs=t.epochs, mae_blr=t.blr,
                           mean=list(base.student.mean), std=list(base.student.std), pos_embed=t.pos_embed)
    data = OmegaConf.merge(base.data, {"limit": teacher_images(t, base)})
    if t.crop_scale is not None:
        data.crop_scale = t.crop_scale
    return demo, data


def teacher_images(t: DictConfig, base: DictConfig) -> int:
    return t.images or base.data.limit


LOADER_ONLY = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor", "max_bad_fraction",
               "bad_check_every")  # data settings that do not change the images a teacher sees


ADDED_DEFAULTS = {"pos_embed": "learned"}  # settings added since records were first kept, recorded only when
# changed, so a teacher of an older record is still recognised


def recipe_record(spec: DictConfig, name: str, base: DictConfig) -> dict:
    """What decides a shared teacher's weights: its recipe, model, pixel statistics and images."""
    demo, data = recipe(spec, name, base)
    teacher = {k: v for k, v in OmegaConf.to_container(spec.teachers[name], enum_to_str=True).items()
               if k != "must_beat_pixels" and not (k in ADDED_DEFAULTS and ADDED_DEFAULTS[k] == v)}
    record = {"teacher": teacher, "model": [demo.arch, demo.vit_kwargs], "mean_std": [demo.mean, demo.std],
              "data": {k: v for k, v in to_dict(data).items() if k not in LOADER_ONLY}}
    return json.loads(json.dumps(record, default=str))


def build_teacher(spec: DictConfig, name: str, base: DictConfig, log=print) -> Path:
    """The teacher file, trained unless one of the same recipe exists (recorded beside it); a file of
    another recipe is refused, never silently reused."""
    path, record = teacher_file(spec, name), recipe_record(spec, name, base)
    recorded = path.with_suffix(".recipe.json")
    if path.is_file():
        if not recorded.is_file():
            log(f"[study] teacher {name}: {path} has no recipe record (made before records were kept): reused "
                f"as it is; delete it to retrain it if teachers.{name} changed")
        elif json.loads(recorded.read_text()) != record:
            raise StudyError(f"teacher {name}: {path} was trained with another recipe (teachers.{name} or the base "
                             f"data changed since); delete {path} and {path.with_suffix('')}.*.json to retrain it")
        log(f"[study] teacher {name}: {path} exists, reused")
        return path
    demo, data = recipe(spec, name, base)
    for stale in (path.with_suffix(".check.json"), path.parent / "analysis" / "analysis.json"):
        stale.unlink(missing_ok=True)  # a check or analysis of an earlier file of this name
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(record, indent=2))
    dataset = build_dataset(data)
    log(f"[study] teacher {name}: {spec.teachers[name].kind.value}, {len(dataset)} images, {demo.teacher_epochs} epochs")
    trainer = train_supervised_teacher if spec.teachers[name].kind is TeacherKind.supervised else train_mae_teacher
    return trainer(demo, data, dataset, path)


class Pixels:
    """Images resized to side x side, grayscale, flattened to [0, 1]: the raw-pixel k-NN baseline."""

    def __init__(self, side: int):
        self.transform = transforms.Compose([transforms.Grayscale(), transforms.Resize((side, side)),
                                             transforms.ToTensor()])

    def __call__(self, image):
        return self.transform(image).flatten()


def heldout_check(model, train_ds, n_bank: int, n_heldout: int, side: int) -> dict:
    """k-NN top-1 of the model and of raw pixels, bank: the first n_bank, queries: the last n_heldout."""
    if n_bank + n_heldout > len(train_ds):
        raise StudyError(f"teacher check: {n_bank} training images + {n_heldout} held out exceed the "
                         f"{len(train_ds)} of the train split; lower evaluate.heldout_images or teachers.*.images")
    bank, held = Subset(train_ds, range(n_bank)), Subset(train_ds, range(len(train_ds) - n_heldout, len(train_ds)))
    feats = knn_classify(*extract_features(model, bank), *extract_features(model, held))
    pixel = Pixels(side)
    flat = lambda ds: embed_dataset(lambda x: x, Transformed(ds, pixel), device="cpu")  # noqa: E731
    pixels = knn_classify(*flat(bank), *flat(held))
    return {"knn_top1": feats["top1"], "pixels_knn_top1": pixels["top1"], "bank": n_bank, "heldout": n_heldout}


def build_teachers(spec: DictConfig, train_ds, log=print) -> dict:
    """Every shared teacher built (or reused) and checked; the checks are cached beside the files."""
    base, out = base_config(spec), {}
    for name in spec.teachers:
        path = build_teacher(spec, name, base, log)
        check_path = path.with_suffix(".check.json")
        if not check_path.is_file():
            n_bank = min(teacher_images(spec.teachers[name], base) or len(train_ds), len(train_ds))
            check = heldout_check(load_model(str(path)), train_ds, n_bank, spec.evaluate.heldout_images,
                                  base.data.img_size)
            check_path.write_text(json.dumps({**check, "kind": spec.teachers[name].kind.value}, indent=2))
        out[name] = {"file": str(path), **json.loads(check_path.read_text())}
        log(f"[study] teacher {name}: k-NN top-1 on held-out training images {out[name]['knn_top1']:.2f} "
            f"(raw pixels {out[name]['pixels_knn_top1']:.2f})")
        if spec.teachers[name].must_beat_pixels:
            require_beats_pixels(name, out[name], path)
    return out


def require_beats_pixels(name: str, check: dict, path: Path) -> None:
    """Hours of students distilled from a teacher weaker than pixels would test nothing."""
    if check["knn_top1"] <= check["pixels_knn_top1"]:
        raise StudyError(f"teacher {name}: k-NN top-1 {check['knn_top1']:.2f} on held-out training images does not "
                         f"beat raw pixels ({check['pixels_knn_top1']:.2f}); change its recipe (teachers.{name}) "
                         f"and delete {path}")
