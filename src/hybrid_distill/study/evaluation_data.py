"""A study's evaluation data: the bank (the students' own training images, `splits.py`) and the test images,
the held-out end checked first. The study command loads it once; each worker process of `parallel.py`
loads its own."""

from omegaconf import DictConfig
from torch.utils.data import Subset

from ..evaluation.command import load_data
from . import splits
from .spec import base_config, eval_data
from .teachers import used_teachers


def first_test(dataset, n: int):
    return Subset(dataset, range(min(n, len(dataset)))) if n else dataset


def evaluation_data(spec: DictConfig) -> tuple:
    """(evaluation data spec, bank subset of the train split, test subset), the held-out end checked first;
    the whole train split is the bank's `.dataset`."""
    data_spec = eval_data(spec, base_config(spec))
    train_ds, test_ds, _ = load_data(data_spec)
    ev, base, shared = spec.evaluate, base_config(spec), used_teachers(spec)
    if shared:  # the teachers' gate holds out the end of the order: nothing may train on it
        splits.check_disjoint(
            len(train_ds),
            {
                "base.data.limit": base.data.limit,
                "evaluate.train_images": ev.train_images,
                **{f"teachers.{n}.images": spec.teachers[n].images or base.data.limit for n in shared},
            },
            ev.heldout_images,
        )
    bank = Subset(train_ds, splits.first(len(train_ds), ev.train_images))  # the students' own images (splits.py)
    return data_spec, bank, first_test(test_ds, ev.test_images)
