"""What a resume may change, what an extension does to the lr, and a weights-only start.

A resume continues one experiment: the checkpoint's config and the new one may differ only in the
schedule's length (`train.epochs`, `train.max_steps`), in bookkeeping that cannot change a number
(logging, checkpoint cadence, loader workers) and in how the same step is executed (FSDP, compile,
activation checkpointing, where JPEGs are decoded: each tested equal to the plain run). Anything else is
shown key by key and needs `--allow-config-change`. `--init-from RUN` is the other case: a new run that starts
from another run's student weights at step 0 with a fresh optimiser.
"""

from .config_schema import ConfigError

SCHEDULE_KEYS = {"train.epochs", "train.max_steps"}
BOOKKEEPING_KEYS = {
    "output_dir",
    "train.log_every",
    "train.progress",
    "train.tensorboard",
    "train.ckpt_every_steps",
    "train.keep_checkpoints",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "train.trackers",
    "train.fsdp",
    "train.compile",
    "train.activation_checkpointing",
    "data.decode",
}


def flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, checkpoint's value, new value) for every key that differs, schedule and bookkeeping aside."""
    a, b = flatten(old), flatten(new)
    keys = sorted((set(a) | set(b)) - SCHEDULE_KEYS - BOOKKEEPING_KEYS)
    missing = "(absent)"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in keys if a.get(k, missing) != b.get(k, missing)]


def with_defaults(old: dict) -> dict:
    """A checkpoint's config over today's defaults: a key added since it was written is not a change."""
    from omegaconf import OmegaConf

    from .config import merge, to_dict
    from .config_schema import Config

    return to_dict(merge(OmegaConf.structured(Config()), old, "the checkpoint's config"))


def check_resume_config(old: dict, new: dict, allow: bool) -> list[str]:
    """Lines to print; raises ConfigError listing the changes unless `allow`."""
    changes = config_changes(with_defaults(old), new)
    if not changes:
        return []
    lines = [f"  {k}: {a!r} -> {b!r}" for k, a, b in changes]
    if not allow:
        raise ConfigError(
            "the config differs from the checkpoint's in more than the schedule length:\n"
            + "\n".join(lines)
            + "\nresume with --allow-config-change to accept this, or use "
            "--init-from RUN to start a new run from its weights"
        )
    return ["resuming with a changed config (--allow-config-change):", *lines]


def schedule_note(old: dict, new: dict, step: int, lr_old: float, lr_new: float) -> str | None:
    """One line when the schedule length changed: the cosine is recomputed over the new length."""
    before, after = old["train"]["epochs"], new["train"]["epochs"]
    if before == after:
        return None
    return (
        f"train.epochs {before} -> {after}: the cosine lr schedule is recomputed over {after} epochs "
        f"(warm-up unchanged), so at step {step} the lr goes from {lr_old:.3g} to {lr_new:.3g}"
    )


def init_state(payload: dict, heads_shapes: dict) -> tuple[dict, bool]:
    """The student state to load for --init-from: the backbone always; the heads when the source run's
    heads have exactly this run's names and shapes (same teachers), else they start fresh."""
    model = payload["model"]  # Student.state_dict()
    state = {k: v for k, v in model.items() if k.startswith("backbone.")}
    heads = {k[len("heads.") :]: v for k, v in model.items() if k.startswith("heads.")}
    same = {k: tuple(v.shape) for k, v in heads.items()} == heads_shapes
    if same:
        state.update({f"heads.{k}": v for k, v in heads.items()})
    return state, same
