"""The `dsbs` command.

Each subcommand lives in `dsbs_jax/commands/<name>.py` and defines
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
command runs, so `dsbs --help` stays fast and one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from dsbs_jax import errors
from dsbs_jax.errors import UserError
from dsbs_jax.host_memory import keep_freed_memory

VERBOSE_ENV = errors.VERBOSE_ENV
# Read before anything imports jax, which sets a default of its own.
TF_LOG_LEVEL_FROM_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
# Commands whose work imports TensorFlow (through seqio or TFDS): it is imported quietly first.
USES_TENSORFLOW = frozenset(
    "tasks inspect prepare vocab corpus train pretrain compile eval predict export sweep "
    "quickstart".split()
)

# name -> (module, one-line help). Order is the order of `dsbs --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "tasks": ("tasks", "list registered SeqIO tasks and mixtures"),
    "stats": ("stats", "per-split counts, parse failures and teacher accuracy of released data"),
    "inspect": ("inspect", "show a task or mixture: examples, token lengths, task shares"),
    "teach": ("teach", "stage 1: extract few-shot CoT rationales and labels from a teacher"),
    "prepare": ("prepare", "write a TFDS dataset (train/validation/test) from teacher records"),
    "vocab": ("vocab", "train a T5-style sentencepiece vocabulary on prepared records"),
    "corpus": ("corpus", "a pretraining corpus and shared vocabulary from prepared train splits"),
    "train": ("train", "train the T5 student (gin-configured, T5X conventions)"),
    "pretrain": ("pretrain", "T5's span-corruption pretraining on plain text (runs/pretrain.gin)"),
    "compile": (
        "compile",
        "compile the train step for a TPU slice here: memory, FLOPs, collectives",
    ),
    "eval": ("eval", "evaluate a checkpoint on a task or mixture"),
    "predict": ("predict", "predict labels (and rationales) for a JSONL file of inputs"),
    "sweep": ("sweep", "train methods x data fractions x seeds and write a report"),
    "report": ("report", "rebuild a sweep report (tables and plots) from finished runs"),
    "quickstart": ("quickstart", "the whole method end to end on the built-in task"),
    "export": ("export", "export a checkpoint as a Hugging Face model or a T5X checkpoint"),
}


class _HelpWithDefaults(argparse.HelpFormatter):
    """`--help` says each option's default, unless it is unset (None, False) or the help
    already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or (isinstance(default, (str, list, tuple)) and not default)
            or not action.option_strings
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's arguments are loaded."""
    parser = argparse.ArgumentParser(
        prog="dsbs",
        description="Distilling step-by-step on JAX: teacher -> records -> tasks -> trainer -> reports.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"keep TensorFlow/absl start-up messages and info logs (or set {VERBOSE_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpWithDefaults
        )
        if name == chosen:
            _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module(f"dsbs_jax.commands.{module}")


def _one_line(e: Exception) -> str:
    """The message of a UserError on one line: gin appends "In call to configurable ..." lines,
    and tf.data wraps an error raised while tracing in "in user code:" and a stack."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    inner = [line for line in lines if line.startswith("UserError: ")]
    return inner[-1][len("UserError: ") :] if inner else lines[0]


def _missing_gin_bindings(e: RuntimeError) -> str | None:
    """gin's "Required bindings for `f` not provided in config: [...]" as one line with what to
    do, or None for any other RuntimeError."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if not first.startswith("Required bindings for"):
        return None
    return (
        f"{first}; the gin files given do not set them: add the command's run gin (dsbs train: "
        "runs/dsbs.gin, finetune.gin or distill.gin; dsbs eval: runs/eval.gin; dsbs predict: "
        "runs/infer.gin) or bind them with --gin.NAME=value"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dsbs` console script."""
    keep_freed_memory()  # before any heavy import allocates: see dsbs_jax/host_memory.py
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = _load(COMMANDS[args.command][0])
    if extra and not getattr(module, "ACCEPTS_GIN_BINDINGS", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.gin_bindings = extra
    previous_sigterm = errors.exit_cleanly_on_sigterm()  # a `kill` runs our cleanup
    verbose = args.verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # for what checks it later, and for worker processes
    if not verbose:
        errors.quiet_startup(args.command in USES_TENSORFLOW, TF_LOG_LEVEL_FROM_USER)
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        message = _one_line(e)
        print(f"dsbs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as e:
        message = errors.disk_full(e) or errors.describe_os_error(e)
        print(f"dsbs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        message = errors.disk_full(e) or _missing_gin_bindings(e) or errors.out_of_memory(e)
        if message is None:
            raise
        print(f"dsbs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a library's own error type for a full disk
        message = errors.disk_full(e)
        if message is None:
            raise
        print(f"dsbs {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dsbs {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous_sigterm is not None:  # as it was for the caller (main called in-process)
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
