"""The training run: set-up, the loop over steps, logging and checkpoints, around `engine.train_step`."""

import contextlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import files
from .build import build_models
from .config import to_dict, to_yaml
from .config_check import micro_batch
from .config_schema import ConfigError
from .data.build import build_dataset, build_loader
from .data.gpu_decode import check_gpu_decode
from .data.shards import ShardStream
from .data.unreadable import sample_name
from .distributed import Dist, init_distributed, lost_peer, mean_over_ranks
from .engine import build_optimizer, lr_at, train_step
from .guards import (
    EXIT_PREEMPTED,
    BadSamples,
    NonFiniteGuard,
    NonFiniteStop,
    Preemption,
    StopTraining,
    lost_rank,
    worker_killed,
)
from .models.attention import student_fused_attention
from .nonfinite import GoodStates, describe
from .provenance import provenance
from .resume import check_fits, resolve_init
from .resume import load as load_resume
from .resume import resolve as resolve_resume
from .resume_policy import check_resume_config, init_state, schedule_note
from .run_dir import RunLock, check_available
from .run_log import RunLog
from .runtime import RunContext, amp_dtype, pick_device, rng_state, seed_everything, set_rng_state
from .summary import startup_summary
from .tracking import open_trackers
from .validate import check_teacher_files

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)


def write_run_files(run_dir: Path, cfg: DictConfig, records: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    (run_dir / "manifest.json").write_text(json.dumps({"teachers": records}, indent=2))


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        resume: str | None = None,
        allow_config_change: bool = False,
        init_from: str | None = None,
        dry_run: bool = False,
    ):
        """dry_run: build everything and write nothing (`train --dry-run`)."""
        self.cfg, self.allow_config_change = cfg, allow_config_change
        self.run_dir = Path(cfg.output_dir) / cfg.name
        self.device = pick_device(cfg.train.device)
        self.dist: Dist = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.data.decode == "gpu":
            check_gpu_decode(self.device)
        check_available(self.run_dir, resume)  # every refusal before anything is built or written
        check_teacher_files(cfg)
        resume_path = resolve_resume(resume, self.run_dir)
        init_path = resolve_init(init_from, resume)
        seed_everything(cfg.seed)  # the same initial student and random teachers on every rank
        self.dataset = build_dataset(cfg.data)  # fails early on a bad path or an empty dataset
        self.micro_batch = micro_batch(cfg.optim.batch_size, cfg.optim.accum_steps, self.dist.world)
        self.loader, self.sampler = build_loader(
            cfg.data,
            self.dataset,
            cfg.optim.batch_size // cfg.optim.accum_steps,
            self.micro_batch,
            cfg.seed,
            self.dist.rank,
            self.dist.world,
        )
        dtype = amp_dtype(cfg.train.amp, self.device)
        # frozen teachers in bf16 under bf16 autocast (~2.9x, bench) or FP8; targets stay fp32
        self.student, self.teachers, self.records = build_models(
            cfg, student_fused_attention(self.device), self.device, dtype
        )
        seed_everything(cfg.seed + self.dist.rank)  # per-rank drop path and random masking
        self.student.to(self.device)
        if cfg.train.compile:  # in place, before DDP: parameter names and checkpoints stay the same
            self.student.compile()
            self.teachers.compile()
        self.model = self.wrap(self.student)
        self.optimizer = build_optimizer(self.student, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype is torch.float16)
        self.ctx = RunContext(
            self.device,
            dtype,
            {n: t.weight for n, t in cfg.teachers.items()},
            cfg.loss.beta,
            cfg.optim.clip_grad or float("inf"),
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch // cfg.optim.accum_steps
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.step = 0
        self.monitor = self.build_monitor() if cfg.train.monitor_every and self.dist.main else None
        self.bad = BadSamples(
            self.run_dir,
            lambda i: sample_name(self.dataset, i),
            cfg.data.max_bad_fraction,
            cfg.data.bad_check_every,
            self.dist.main,
        )
        self.init_from(init_path)
        self.resume(resume_path)
        if self.step > self.last_step():
            raise ConfigError(
                f"the run's checkpoint is at step {self.step}, past step {self.last_step()} where this "
                "config stops (train.max_steps, train.epochs): raise them to continue it, or start a "
                "new run"
            )
        if self.dist.main:
            print(startup_summary(self), flush=True)

    def init_from(self, path: Path | None) -> None:
        """Another run's student weights, step 0, fresh optimiser (a new run, not a resume)."""
        if path is None:
            return
        heads = {k: tuple(v.shape) for k, v in self.student.heads.state_dict().items()}
        state, with_heads = init_state(files.load_checkpoint(path), heads)
        set_model_state_dict(self.student, state, options=StateDictOptions(full_state_dict=True, strict=False))
        what = "backbone and heads" if with_heads else "backbone; heads start fresh (other teachers)"
        if self.dist.main:
            print(f"initialised the student from {path} ({what}); step 0, fresh optimiser")

    def build_monitor(self):
        """Attention distance and NMI of the student on a fixed probe batch (paper section 2 measures)."""
        from .analysis.monitor import AttentionMonitor
        from .data.transforms import eval_transform, to_unit

        transform = eval_transform(self.cfg.data.img_size, self.cfg.data.interpolation)
        count = min(self.cfg.train.monitor_images, len(self.dataset))
        if isinstance(self.dataset, ShardStream):
            pil = self.dataset.peek(count)
        else:
            pil = [self.dataset[i][0] for i in range(count)]
        images = to_unit(torch.stack([transform(image) for image in pil]))
        bb = self.student.backbone
        probe = self.student.normalize(images.to(self.device))
        return AttentionMonitor(probe, tuple(bb.patch_embed.grid_size), tuple(bb.patch_embed.patch_size))

    def wrap(self, student):
        """DDP, or FSDP2 with one unit per block; the relation blocks stay in the root unit because
        their attention is read through submodules, not through the block's own forward."""
        if not self.dist.enabled:
            return student
        if self.cfg.train.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            # the run's own device: fully_shard's default mesh is CUDA whenever a GPU is visible
            mesh = init_device_mesh(self.device.type, (self.dist.world,))
            for i, block in enumerate(student.backbone.blocks):
                if i not in student.relation_blocks:
                    fully_shard(block, mesh=mesh)
            return fully_shard(student, mesh=mesh)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=ids)

    def resume(self, path: Path | None) -> None:
        if path is None:
            return
        state = load_resume(path)
        check_fits(state, self.student, self.cfg, path)
        notes = check_resume_config(state["config"], to_dict(self.cfg), self.allow_config_change)
        set_model_state_dict(self.student, state["model"], options=FULL_STATE)
        set_optimizer_state_dict(self.student, self.optimizer, state["optimizer"], options=FULL_STATE)
        self.scaler.load_state_dict(state["scaler"])
        self.teachers.load_normalizer_state(state.get("teachers", {}))
        self.step = int(state["step"])
        set_rng_state(state["rng"][min(self.dist.rank, len(state["rng"]) - 1)])
        if "bad_samples" in state:
            self.bad.load_state_dict(state["bad_samples"][min(self.dist.rank, len(state["bad_samples"]) - 1)])
        else:
            self.bad.epoch = self.step // self.steps_per_epoch
        old_total = state["config"]["train"]["epochs"] * self.steps_per_epoch
        note = schedule_note(state["config"], to_dict(self.cfg), self.step, self.lr(old_total), self.lr())
        if self.dist.main:
            print("\n".join([f"resumed from {path} at step {self.step}", *notes, *([note] if note else [])]))

    def gather(self, value) -> list:
        if not self.dist.enabled:
            return [value]
        values = [None] * self.dist.world
        torch.distributed.all_gather_object(values, value)
        return values

    def state(self) -> dict:
        """Full (unsharded) states gathered on every rank (a collective): the same checkpoint whether
        the run used one process, DDP or FSDP2; optimiser state keyed by parameter name."""
        rngs, bads = self.gather(rng_state()), self.gather(self.bad.state_dict())
        model_state = get_model_state_dict(self.student, options=FULL_STATE)  # Student.state_dict(), as it is
        optim_state = get_optimizer_state_dict(self.student, self.optimizer, options=FULL_STATE)
        return {
            "model": model_state,
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // max(1, self.steps_per_epoch),
            "rng": rngs,
            "bad_samples": bads,
            "teachers": self.teachers.normalizer_state(),  # PHI-S statistics (models/phis.py)
            "config": to_dict(self.cfg),
        }

    def save(self, state: dict | None = None) -> None:
        """This state (or `state`, a kept copy), written by rank 0."""
        state = state or self.state()
        if not self.dist.main:
            return
        path = files.checkpoint_path(self.run_dir, state["step"])
        files.save_checkpoint(path, {**state, "provenance": provenance()})
        files.prune_checkpoints(self.run_dir, self.cfg.train.keep_checkpoints)

    def lr(self, total_steps: int | None = None) -> float:
        o = self.cfg.optim
        peak = o.blr * o.batch_size / 256  # linear scaling rule (MAE, dBOT)
        warmup = int(o.warmup_epochs * self.steps_per_epoch)
        return lr_at(self.step, total_steps or self.total_steps, warmup, peak, o.min_lr)

    def last_step(self) -> int:
        return min(self.total_steps, self.cfg.train.max_steps or self.total_steps)

    def fit(self, preemption: Preemption | None = None) -> Path:
        """Own the run directory, write the run's files, train to the last step. A guard or a
        preemption signal saves and raises StopTraining (a signal before the first step saves nothing)."""
        preemption = preemption or Preemption()
        try:
            with RunLock(self.run_dir) if self.dist.main else contextlib.nullcontext():
                if self.dist.main:
                    write_run_files(self.run_dir, self.cfg, self.records)
                return self.loop(preemption)
        finally:
            preemption.restore()

    def loop(self, preemption: Preemption) -> Path:
        cfg, last = self.cfg.train, self.last_step()
        log = RunLog(
            self.run_dir,
            last,
            self.step,
            self.dist.main,
            cfg.progress,
            cfg.tensorboard,
            open_trackers(self.cfg) if self.dist.main else [],
        )
        nonfinite, good = NonFiniteGuard(cfg.max_nonfinite_steps), GoodStates(cfg.good_state_every)
        self.student.train()
        self.stepping, self.batches = False, None
        try:
            if preemption.should_stop():
                raise preemption.stopped(f"before step {self.step + 1}: nothing new to save", save=False)
            if self.bad.failed:
                self.bad.check()  # a resumed run keeps the verdict of the run it continues
            while self.step < last:
                epoch = self.step // self.steps_per_epoch
                self.run_epoch(epoch, last, log, nonfinite, good, preemption)
                log.log(self.step, {"epoch": epoch, **self.bad.end_epoch(epoch), "skipped_steps": nonfinite.total})
                self.save()
        except Exception as stop:  # noqa: BLE001 (anything else is raised again by stop())
            self.stop(stop, good, log)
        finally:
            log.close()
        return self.run_dir

    def stop(self, stop: Exception, good: GoodStates, log: RunLog) -> None:
        """Save what is worth resuming from, then raise StopTraining."""
        if not isinstance(stop, StopTraining):
            stop = self.as_stop(stop)
        if isinstance(stop, NonFiniteStop) and good.oldest() is not None:
            self.save_good(good.oldest())
            stop = NonFiniteStop(
                f"{stop}; saved the state of step {good.oldest()['step']}, from before it", stop.exit_code
            )
        elif stop.save:
            self.save()
        log.write(f"stopped at step {self.step}: {stop}")
        raise stop

    def as_stop(self, err: Exception) -> StopTraining:
        """The stop that another rank's or a loader worker's death means; any other error is raised again."""
        if lost_peer(err):
            return lost_rank(self.dist.rank, self.dist.world, files.newest_complete(self.run_dir, warn=False))
        if not worker_killed(err, self.batches):
            raise err
        # torch raises this from its SIGCHLD handler, maybe mid-step, and on one rank only: the state
        # is safe to save at a step boundary of a single process; otherwise the last checkpoint stays
        safe = not self.stepping and not self.dist.enabled
        return StopTraining(
            f"preempted: a loader worker was killed by a signal; resume with --resume auto "
            f"(exit code {EXIT_PREEMPTED})",
            EXIT_PREEMPTED,
            save=safe,
        )

    def save_good(self, state: dict) -> None:
        """The kept state becomes the newest checkpoint: newer ones move to checkpoints/diverged/."""
        if self.dist.main:
            for path in files.list_checkpoints(self.run_dir):
                if int(path.stem.split("-")[1]) > state["step"]:
                    files.move_aside(path, self.run_dir / "checkpoints" / "diverged")
        self.save(state)

    def run_epoch(
        self, epoch: int, last: int, log: RunLog, nonfinite: NonFiniteGuard, good: GoodStates, preemption: Preemption
    ) -> None:
        """The steps of one epoch from where the run stands (mid-epoch after a resume)."""
        accum, start = self.cfg.optim.accum_steps, self.step % self.steps_per_epoch
        self.sampler.set_epoch(epoch, start * accum)
        batches = self.batches = iter(self.loader)
        for _ in range(self.sampler.skip):  # streams only: replay to where the run stopped
            next(batches)
        for _ in range(start, self.steps_per_epoch):
            good.keep(self.step, nonfinite.in_row, self.state)
            micro = [next(batches) for _ in range(accum)]  # (uint8 images, labels, bad index)
            self.stepping = True
            lr = self.lr()
            images = [self.images(m[0]) for m in micro]
            parts = train_step(self.model, self.teachers, images, self.optimizer, self.scaler, lr, self.ctx)
            self.step += 1
            self.stepping = False
            self.bad.update(torch.cat([m[2] for m in micro]), self.step)
            nonfinite.update(
                bool(parts["skipped"]),
                self.step,
                lambda parts=parts, images=images: describe(parts, self.teachers, images, self.ctx),
            )
            self.after_step(log, parts, lr, epoch)
            if self.step >= last:
                return  # the run is complete: a signal now changes nothing (exit 0)
            if preemption.should_stop():
                raise preemption.stopped(f"after step {self.step}: checkpoint saved")

    def images(self, batch):
        """uint8 images (B, 3, S, S); data.decode=gpu: decoded, cropped and flipped on the device."""
        if self.cfg.data.decode != "gpu":
            return batch
        return batch.decode(self.cfg.data.img_size, self.device, self.cfg.data.interpolation)

    def after_step(self, log: RunLog, parts: dict, lr: float, epoch: int) -> None:
        cfg = self.cfg.train
        if self.step % cfg.log_every == 0 or self.step == 1:
            record = mean_over_ranks({k: float(v) for k, v in parts.items()})  # every rank takes part
            record.update(lr=lr, epoch=epoch, img_per_s=log.throughput(self.step, self.cfg.optim.batch_size))
            record.update(self.teachers.normalizer_log())
            log.log(self.step, record)
            log.show(self.step, record)
        if self.monitor is not None and self.step % cfg.monitor_every == 0:
            log.log(self.step, self.monitor(self.student.backbone))
        if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0:
            self.save()


def train(cfg: DictConfig, resume: str | None = None, **options) -> Path:
    """options: allow_config_change, init_from (see Trainer). Signal handlers first: a preemption
    during start-up exits 75 too, without a checkpoint."""
    preemption = Preemption()
    try:
        return Trainer(cfg, resume, **options).fit(preemption)
    finally:
        preemption.restore()
