"""The small classification sets of paper Table 2 through torchvision's readers (no downloads here).

`cifar100:PATH` torchvision CIFAR100 (the python version under PATH/cifar-100-python), `cars:PATH`
torchvision StanfordCars (PATH/stanford_cars, needs scipy), `inat19:PATH` torchvision INaturalist
version '2019' (images under PATH/2019/<super category>/<id>/) split by the official
PATH/val2019.json: torchvision indexes the 2019 train and val images together. Each yields
(PIL image, int label) and knows its classes. Evaluation resizes to 256/224 and centre-crops, as
dBOT `evaluation/eval_cls.py` does.
"""

import json
from pathlib import Path

import torch

TORCHVISION_DATA = ("cifar100", "cars", "inat19")


class Split(torch.utils.data.Dataset):
    """Some of a dataset's items, with its class names (so nothing is read to count the classes)."""

    def __init__(self, dataset, indices: list[int], classes: list[str]):
        self.dataset, self.indices, self.classes = dataset, indices, classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def inat19_splits(root: Path):
    """torchvision's INaturalist('2019') cut into the official train / val image lists."""
    from torchvision.datasets import INaturalist

    val_file = root / "val2019.json"
    if not val_file.is_file():
        raise FileNotFoundError(f"inat19:{root}: no val2019.json (the official annotation file) beside 2019/")
    full = INaturalist(str(root), version="2019")
    val = {Path(image["file_name"]).name for image in json.loads(val_file.read_text())["images"]}
    in_val = [fname in val for _, fname in full.index]
    classes = list(full.all_categories)
    return (
        Split(full, [i for i, v in enumerate(in_val) if not v], classes),
        Split(full, [i for i, v in enumerate(in_val) if v], classes),
    )


def torchvision_data(name: str, root: str):
    """(train, test, info) of one of TORCHVISION_DATA at `root`; a missing dataset fails in one line."""
    from torchvision import datasets

    path = Path(root)
    info = {"name": name, "spec": f"{name}:{path.resolve()}", "crop_pct": 0.875}
    try:
        if name == "cifar100":
            return datasets.CIFAR100(root, train=True), datasets.CIFAR100(root, train=False), info
        if name == "cars":
            return datasets.StanfordCars(root, split="train"), datasets.StanfordCars(root, split="test"), info
        return (*inat19_splits(path), info)
    except (RuntimeError, ImportError) as err:  # torchvision: "Dataset not found or corrupted", scipy missing
        raise FileNotFoundError(f"--data {name}:{root}: {str(err).splitlines()[0]}") from None
