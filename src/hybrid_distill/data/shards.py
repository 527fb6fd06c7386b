"""WebDataset shards (.tar of `<key>.{jpg,png,...}`, optionally `<key>.cls`), streamed per rank and worker.

Shards are split by rank, then by loader worker (each reads whole shards, as webdataset's
split_by_node / split_by_worker do); each worker cycles through its shards in an epoch-seeded order,
so every rank yields batches for as long as the trainer asks and no rank runs dry before another.
An epoch is data.num_samples // global batch steps. Crops are seeded by (seed, epoch, rank, worker,
position), so the stream is the same after a restart; a resumed run skips the batches already used.
Within a worker, samples pass through webdataset's shuffle buffer (`filters.shuffle`, its default
1000 samples) driven by a `random.Random` seeded like the shard order, so a batch mixes shards and
the replay after a resume yields the same order: resume stays exact.
Labels are optional (distillation needs none): a sample without `.cls` gets label -1.
Unreadable samples are replaced by the next one and reported like those of indexable datasets.
"""

import io
import random
import re
import tarfile

import numpy as np
import torch
from PIL import Image

from .errors import DataError
from .unreadable import BAD_IMAGE_ERRORS, DEFAULT_MAX_PIXELS, pixel_limit

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm")
# a member's sample key and extension: the path up to the first dot of the file name (webdataset's
# tariterators.base_plus_ext)
SAMPLE_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
SHUFFLE_BUFFER = 1000  # samples per worker: webdataset's default bufsize


NO_LABEL = -1


def decode_sample(sample: dict, max_pixels: int = DEFAULT_MAX_PIXELS):
    """A webdataset sample dict -> (PIL image, int label or -1); raises on a broken sample, one above
    `max_pixels` or one without an image, naming the keys it has."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(
            f"sample {sample.get('__key__')} has no image key ({'/'.join(IMAGE_KEYS)}); "
            f"its keys: {', '.join(found) or 'none'}"
        )
    with pixel_limit(max_pixels):
        image = Image.open(io.BytesIO(sample[key]))
        image.load()
    label = int(sample["cls"].decode().strip()) if "cls" in sample else NO_LABEL
    return image, label


def count_samples(shards: list[str]) -> int | None:
    """Samples (distinct keys with an image) in local shards, from the tar headers alone (tarfile seeks past
    the data); None when a shard is remote. A shard that is not a whole tar, or shards without an image,
    are refused in one line."""
    if any("://" in shard for shard in shards):
        return None
    keys, found = 0, set()
    for shard in shards:
        try:
            with tarfile.open(shard, mode="r:*") as tar:
                names = [m.name for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"shard {shard} is not a whole tar file ({err}): rewrite or remove it") from None
        parts = [match.groups() for match in map(SAMPLE_NAME.match, names) if match]
        keys += len({key for key, ext in parts if ext in IMAGE_KEYS})
        found |= {ext for _, ext in parts}
    if not keys:
        raise DataError(
            f"the {len(shards)} shards hold no sample with an image: no image key ({'/'.join(IMAGE_KEYS)}); "
            f"its keys: {', '.join(sorted(found)) or 'none'}"
        )
    return keys


class ShardStream(torch.utils.data.IterableDataset):
    def __init__(self, urls: str, transform, num_samples: int, seed: int = 0, rank: int = 0, world: int = 1):
        from webdataset.shardlists import expand_urls

        self.shards = expand_urls(urls)
        if len(self.shards) < world:
            raise ValueError(f"{len(self.shards)} shards for {world} ranks: every rank needs at least one shard")
        self.transform, self.num_samples, self.seed = transform, num_samples, seed
        self.rank, self.world, self.epoch = rank, world, 0
        self.max_pixels = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return self.num_samples

    def filename(self, position: int, absolute: bool = True) -> str:
        """How bad_samples.txt names a broken sample: its position in a worker's stream (the shard
        reader's warning names the tar member)."""
        return f"shard stream position {position}"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker: int, workers: int) -> list[str]:
        mine = self.shards[self.rank :: self.world]
        return mine[worker::workers] or mine  # more workers than shards: some read the same shards

    def peek(self, count: int) -> list:
        """The first `count` readable images of the first shards, in order (a fixed probe batch)."""
        import webdataset as wds

        images = []
        for sample in wds.tarfile_samples([{"url": url} for url in self.shards], handler=wds.warn_and_continue):
            try:
                images.append(decode_sample(sample, self.max_pixels)[0])
            except BAD_IMAGE_ERRORS:
                continue
            if len(images) == count:
                break
        return images

    def raw_samples(self, shards: list[str], order: random.Random):
        """The worker's shards without end, each cycle in a new seeded order (the trainer ends epochs)."""
        import webdataset as wds

        while True:
            order.shuffle(shards)
            yield from wds.tarfile_samples([{"url": url} for url in shards], handler=wds.warn_and_continue)

    def __iter__(self):
        from webdataset import filters

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        stream_seed = [self.seed, self.epoch, self.rank, worker]
        raw = self.raw_samples(self.my_shards(worker, workers), random.Random(str(stream_seed)))
        mixed = filters.shuffle(bufsize=SHUFFLE_BUFFER, rng=random.Random(str(stream_seed + ["buffer"])))(raw)
        for position, sample in enumerate(mixed, start=1):
            try:
                image, label = decode_sample(sample, self.max_pixels)
            except BAD_IMAGE_ERRORS as err:
                yield torch.zeros(0, dtype=torch.uint8), NO_LABEL, position, str(err)  # dropped by the collate below
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence(stream_seed + [position]).generate_state(1)[0]))
                yield self.transform(image), label, -1, ""


def collate_readable(batch):
    """Stack the readable samples; a broken one is replaced by a readable neighbour and its stream
    position reported as bad (the batch keeps its size)."""
    good = [b for b in batch if b[2] < 0]
    bad = [b[2] for b in batch if b[2] >= 0]
    if not good:
        raise RuntimeError(f"a whole batch of unreadable samples, e.g. {batch[0][3]}: check the shards")
    good += [good[i % len(good)] for i in range(len(batch) - len(good))]
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good])
    return images, labels, torch.tensor(bad + [-1] * (len(batch) - len(bad)))


class StreamPosition:
    """The sampler's role for a stream: epoch length, epoch seeding, and how many batches to skip."""

    def __init__(self, stream: ShardStream, global_batch: int):
        if stream.num_samples < global_batch:
            raise ValueError(f"data.num_samples={stream.num_samples} is less than one global batch ({global_batch})")
        self.stream, self.global_batch, self.skip = stream, global_batch, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.stream.set_epoch(epoch)
        self.skip = start_step  # micro-batches of this epoch already trained on
