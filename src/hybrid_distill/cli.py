"""`hybrid-distill train|demo|study|analyze|eval|export|teachers|bench`: thin calls into the library.

Process-wide set-up (warnings, threads) happens here and nowhere else. A known problem with the
input ends the command with one line naming it and the fix, and exit code 2.
"""

import importlib
import os
import sys

from . import __version__
from .cli_parser import Parser
from .config import load_config, to_yaml
from .config_schema import ConfigError
from .data.build import DataError
from .files import CannotWrite
from .weights.safe_load import UnsafeCheckpointError

# what bad input raises anywhere in the package: said in one line, exit code 2
BAD_INPUT = (
    ConfigError,
    DataError,
    CannotWrite,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    UnsafeCheckpointError,
)

# subcommand -> (module, function, help); each takes its own argv
DELEGATED = {
    "demo": ("hybrid_distill.demo.run", "main", "offline demo on Fashion-MNIST: teachers, students, report"),
    "analyze": ("hybrid_distill.analysis.command", "main", "attention distance, NMI and attention maps"),
    "eval": ("hybrid_distill.evaluation.command", "main", "k-NN, linear probe or fine-tuning of a model"),
    "export": ("hybrid_distill.weights.command", "export_main", "export a student for timm, ViTDet or mmseg"),
    "teachers": ("hybrid_distill.weights.command", "teachers_main", "list or prefetch teacher weights"),
    "study": ("hybrid_distill.study.command", "main", "rows x seeds: train, evaluate, analyse; mean and 95% interval"),
    "bench": ("hybrid_distill.bench.command", "main", "time the optimised step against a plain one, phase by phase"),
}


def train_main(argv: list[str]) -> int:
    parser = Parser(prog="hybrid-distill train", description="Distil a ViT student from its teachers.")
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.blr=1e-4 teachers.mim.weight=0.5")
    parser.add_argument("--resume", default=None, help="checkpoint file, run directory, or 'auto' (newest of this run)")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although the config differs in more than train.epochs / train.max_steps",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start a new run from another run's student weights (step 0, fresh optimiser)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build data, models and optimiser, print the summary, run no step and write nothing",
    )
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    if args.resume is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
        args.resume = "auto"  # a requeued SLURM job picks up where it was preempted
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from .guards import StopTraining
    from .trainer import Trainer, train

    options = dict(resume=args.resume, allow_config_change=args.allow_config_change, init_from=args.init_from)
    if args.dry_run:
        Trainer(cfg, dry_run=True, **options)
        print("dry run: nothing trained, nothing written")
        return 0
    try:
        run_dir = train(cfg, **options)
    except StopTraining as stop:
        print(f"hybrid-distill train: {stop}", file=sys.stderr)
        return stop.exit_code
    print(f"run directory: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "train": "distil a student from a YAML config with overrides",
        **{k: v[2] for k, v in DELEGATED.items()},
    }
    if argv and argv[0] not in (*commands, "-h", "--help", "--version"):
        print(
            f"hybrid-distill: error: unknown command '{argv[0]}'; choose one of {', '.join(commands)}", file=sys.stderr
        )
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, commands))
        lines = "\n".join(f"  {k:<{width}}  {v}" for k, v in commands.items())
        print(f"usage: hybrid-distill COMMAND [ARGS]\n\ncommands:\n{lines}")
        return 0
    if argv[:1] == ["--version"]:
        print(f"hybrid-distill {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            return train_main(rest)
        module, func, _ = DELEGATED[command]
        code = getattr(importlib.import_module(module), func)(rest)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except BAD_INPUT as err:
        print(f"hybrid-distill {command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training, or a second one inside it: one line, no traceback
        print(f"\nhybrid-distill {command}: interrupted (Ctrl-C); nothing more was saved", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly (Python docs, signal / SIGPIPE note)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def one_line(err: Exception) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
