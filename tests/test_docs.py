"""The README and docs/ as a tested contract: their commands and snippets, taken from the files.

A fenced block is marked on the line before its fence:

    <!-- doc-test: run -->             every command (or the Python snippet) runs, at tiny scale
    <!-- doc-test: run as written -->  every command runs with its own sizes (no OVERRIDES): a
                                       command the docs say runs on a 2-core CPU as it stands
    <!-- doc-test: dry_run -->         every command runs with --dry_run appended
    <!-- doc-test: not run: REASON --> nothing runs; the test shows REASON as a skip, and still
                                       checks every flag the block names against the command

Every fenced block holding a command (`dsbs`, `python`, `make`, ...) must carry a mark, and every
inline `dsbs ...` in the text has its flags checked, so a renamed flag or gin file fails here.

Commands run in this process (`dsbs_jax.cli.main`, `exec` for Python), in a workspace whose
`../shared/data/dsbs` holds tiny released-layout data (cqa, svamp, esnli) written below, with
`$DSBS_DATA_DIR` pointing at a data dir where svamp is prepared with a vocabulary. What the test
changes, besides that, is listed in OVERRIDES and PATHS: model gins become the tiny one, steps,
batches and lengths shrink, and absolute paths (`/tmp/...`, `/runs/...`) land in the workspace.
Blocks run in the order of DOC_FILES (training.md trains the model that pretrained.md exports).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from dsbs_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [
    "README.md",
    "docs/data.md",
    "docs/teacher.md",
    "docs/builtin.md",
    "docs/training.md",
    "docs/pretrained.md",
    "docs/quickstart.md",
    "docs/performance.md",
    "docs/scaling.md",
    "docs/real_data.md",
    "docs/CONTRIBUTING.md",
    "bench/README.md",
]
UNCHECKED: set[str] = set()  # doc files not (yet) under this test

# What the test adds to each `dsbs` command it runs, so that it runs in seconds.
OVERRIDES: dict[str, list[str]] = {
    "train": [
        "--gin.TRAIN_STEPS=2",
        "--gin.BATCH_SIZE=8",
        "--gin.EVAL_PERIOD=2",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 64}",
        "--gin.train.eval_examples=4",
        "--gin.train.test_split=None",
    ],
    "eval": ["--gin.EVAL_EXAMPLES=4", "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"],
    "predict": ["--gin.INPUT_LENGTH=64", "--gin.TARGET_LENGTH=8", "--gin.BATCH_SIZE=8"],
    "vocab": ["--vocab_size", "400"],
    "inspect": ["--max_examples", "50"],
    "compile": ["--gin.VOCAB_SIZE=512"],  # the tiny gin takes its vocabulary from a task
}
MODEL_GIN = (re.compile(r"models/t5_1_1_(small|base|large|xl|xxl)\.gin"), "models/t5_1_1_tiny.gin")
# Absolute paths in the docs, moved into the workspace; the exported run is training.md's.
PATHS = [
    (re.compile(r"(?<![\w./])/(tmp|runs|export|ckpt|data)/"), "{ws}/abs/\\1/"),
]
# Python snippets: sizes the test shrinks (the left side must be in the snippet as written).
SNIPPET_SIZES = {
    '{"train": 4000, "validation": 500, "test": 500}': '{"train": 40, "validation": 8, "test": 8}'
}
PROGRAMS = ("dsbs", "python", "make", "pip", "git", "gsutil", "huggingface-cli", "export")
MARK = re.compile(r"<!--\s*doc-test:\s*(.*?)\s*-->")


@dataclasses.dataclass
class Block:
    path: str
    line: int
    info: str
    body: list[str]
    mark: str | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.info.startswith("python")

    def commands(self) -> list[str]:
        """Shell commands: `$ `-prompted lines (others are output) or every line; `\\` joins."""
        prompted = any(line.startswith("$ ") for line in self.body)
        out, current = [], None
        for line in self.body:
            if current is None:
                if prompted and not line.startswith("$ "):
                    continue
                line = line[2:] if prompted else line
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                current = ""
            current += line.rstrip()
            if current.endswith("\\"):
                current = current[:-1] + " "
                continue
            out.append(current)
            current = None
        return out


def read_blocks(path: str) -> list[Block]:
    lines = (REPO / path).read_text().splitlines()
    blocks, mark_line, mark, i = [], -2, None, 0
    while i < len(lines):
        found = MARK.fullmatch(lines[i].strip())
        if found:
            mark_line, mark = i, found.group(1)
        elif lines[i].startswith("```"):
            start, info, body = i, lines[i][3:].strip(), []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(
                Block(path, start + 1, info, body, mark if mark_line == start - 1 else None)
            )
        i += 1
    return blocks


def _program(command: str) -> str | None:
    """The program a command line runs (after `NAME=value` environment assignments)."""
    words = [w for w in command.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    return words[0] if words else None


def _has_command(block: Block) -> bool:
    return block.is_python or any(_program(c) in PROGRAMS for c in block.commands())


def _blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in read_blocks(path) if b.mark or _has_command(b)]


# --- tokens: placeholders, optional parts, environment assignments ---------------------------


def _tokens(command: str) -> tuple[list[str], list[str]]:
    """(required tokens, all tokens) of a command: `[...]` parts are optional, `A=b` prefixes
    (environment assignments) are dropped."""
    required, every, depth = [], [], 0
    for token in shlex.split(command, comments=True):
        opens = token.startswith("[")
        closes = token.endswith("]") and (depth > 0 or opens)  # not `train[:25%]`
        clean = token[opens : len(token) - closes]
        depth += opens
        if clean:
            every.append(clean)
            if not depth:
                required.append(clean)
        depth -= closes
    while required and re.fullmatch(r"[A-Z_]+=\S*", required[0]):
        required.pop(0)
    while every and re.fullmatch(r"[A-Z_]+=\S*", every[0]):
        every.pop(0)
    return required, every


# --- checking flags without running ----------------------------------------------------------


def _option_strings(command: str) -> set[str]:
    parser = cli.build_parser([command])
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {s for action in sub._actions for s in action.option_strings}


def _script_flags(script: pathlib.Path) -> set[str]:
    """The `--flags` a script's argparse defines (read from its source, not run)."""
    flags = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("-"):
                    flags.add(arg.value)
    return flags


def _flags(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--") and not t.startswith("--gin.")]


def check_flags(command: str, where: str) -> None:
    """Every flag a documented command names exists; gin files named by --gin_file exist."""
    _, tokens = _tokens(command)
    if not tokens:
        return
    program, args = tokens[0], tokens[1:]
    if program == "dsbs" and args and args[0].isupper():
        return  # `dsbs NAME`: a placeholder for any command
    if program == "dsbs":
        assert args and args[0] in cli.COMMANDS, f"{where}: no command `dsbs {args[:1]}`"
        known = _option_strings(args[0])
        for flag in _flags(args[1:]):
            assert flag in known, f"{where}: `dsbs {args[0]}` has no flag {flag}"
        gin_files = [t.split("=", 1)[1] for t in args if t.startswith("--gin_file=")]
        for gin_file in gin_files:
            if gin_file.endswith(".gin") and not gin_file.startswith("t5x/"):  # t5x/: T5X's
                from dsbs_jax.train import gin_utils

                assert (gin_utils.PACKAGE_GIN_DIR / gin_file).is_file(), (
                    f"{where}: no gin file {gin_file}"
                )
    elif program == "python" and args and args[0].endswith(".py"):
        script = REPO / args[0]
        assert script.is_file(), f"{where}: no script {args[0]}"
        known = _script_flags(script)
        for flag in _flags(args[1:]):
            assert flag in known, f"{where}: {args[0]} has no flag {flag}"
    elif program.endswith(".sh") and (REPO / program).is_file():
        # a launcher: its own flags before `--`, `dsbs train`'s after it
        cut = args.index("--") if "--" in args else len(args)
        text = (REPO / program).read_text()
        known = {f for alts in re.findall(r"^\s*([-\w|]+)\)", text, re.M) for f in alts.split("|")}
        for flag in _flags(args[:cut]):
            assert flag in known, f"{where}: {program} has no flag {flag}"
        if cut < len(args) and "t5x" not in args[:cut]:
            check_flags(shlex.join(["dsbs", "train", *args[cut + 1 :]]), where)
    elif program == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        for target in args:
            assert target in targets, f"{where}: the Makefile has no target {target}"


# --- the workspace ---------------------------------------------------------------------------


def _write_released(root: pathlib.Path, n_train: int = 40, n_test: int = 10) -> None:
    """Tiny data in the released layout (gold JSON lines + llm/<split>_CoT_0.json)."""

    def write(ds, split, gold, raw):
        (root / ds / "llm").mkdir(parents=True, exist_ok=True)
        with open(root / ds / f"{ds}_{split}.json", "w") as f:
            f.writelines(json.dumps(g) + "\n" for g in gold)
        (root / ds / "llm" / f"{split}_CoT_0.json").write_text(json.dumps(raw))

    names = ["Tom", "Ana", "Lily", "Sam", "Nora"]
    things = ["apples", "pens", "books", "coins", "shells"]
    for split, n in (("train", n_train), ("test", n_test)):
        gold, raw = [], []
        for i in range(n):
            a, b, who, what = 3 + i % 7, 1 + i % 5, names[i % 5], things[(i // 5) % 5]
            body = f"{who} has {a} {what} and gets {b} more {what} on day {i}."
            gold.append(
                {
                    "input": f"{body}\nHow many {what} does {who} have now?",
                    "label": f"( {a}.0 + {b}.0 )",
                }
            )
            raw.append(
                f"{who} has {a} and gets {b}, so {a} + {b} = {a + b}. The answer is ({a} + {b}).\n\nQ: next"
            )
        write("svamp", split, gold, raw)
        gold, raw = [], []
        for i in range(n):
            choices = [f"{things[(i + k) % 5]} {i}" for k in range(5)]
            gold.append(
                {
                    "id": f"cqa-{split}-{i}",
                    "question": f"Where would {names[i % 5]} keep item {i}?",
                    "choices": choices,
                    "answer": choices[i % 5],
                }
            )
            raw.append(
                f"The answer must be a place. So the answer is ({'abcde'[i % 5]}) {choices[i % 5]}.\n\nQ: next"
            )
        write("cqa", split, gold, raw)
    labels = ["entailment", "neutral", "contradiction"]
    for split, n in (("valid", n_train), ("test", n_test)):
        gold = [
            {
                "premise": f"{names[i % 5]} holds {things[i % 5]} number {i}.",
                "hypothesis": f"Someone holds {things[i % 5]}.",
                "label": i % 3,
            }
            for i in range(n)
        ]
        raw = [
            f"Holding them is what it says.\nAnswer: {labels[i % 3]}\n\nPremise: next"
            for i in range(n)
        ]
        write("esnli", split, gold, raw)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """ws/repo is the working directory; ws/shared/data/dsbs its `../shared/data/dsbs`; svamp is
    prepared (with a vocabulary) under ws/data, which is $DSBS_DATA_DIR."""
    from dsbs_jax.data import vocab as vocab_lib
    from dsbs_jax.data.cards import load_card
    from dsbs_jax.data.prepare import prepare

    ws = tmp_path_factory.mktemp("docs")
    _write_released(ws / "shared" / "data" / "dsbs")
    (ws / "repo").mkdir()
    prepare(
        load_card("svamp"), str(ws / "shared/data/dsbs/svamp"), str(ws / "data"), log=lambda s: None
    )
    vocab_lib.train_vocab("svamp", str(ws / "data"), vocab_size=400)
    inputs = [{"input": "Tom has 3 pens and gets 2 more pens.\nHow many pens does Tom have now?"}]
    (ws / "repo" / "inputs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in inputs))
    return ws


@pytest.fixture
def in_workspace(workspace, monkeypatch):
    monkeypatch.chdir(workspace / "repo")
    monkeypatch.setenv("DSBS_DATA_DIR", str(workspace / "data"))
    return workspace


def _rewrite(text: str, ws: pathlib.Path) -> str:
    for pattern, replacement in [MODEL_GIN, *PATHS]:
        text = pattern.sub(replacement.replace("{ws}", str(ws)), text)
    return text


@contextlib.contextmanager
def _fresh_settings():
    """Each command as in a new process: no gin bindings or seqio data-dir override left over."""
    import gin
    import seqio

    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()
        seqio.set_tfds_data_dir_override(None)


def run_command(
    command: str, ws: pathlib.Path, dry_run: bool, where: str, as_written: bool = False
) -> None:
    tokens, _ = _tokens(_rewrite(command, ws))
    tokens = [os.path.expandvars(t) for t in tokens]
    program, args = tokens[0], tokens[1:]
    if dry_run:  # before a launcher's `--`, after which the trainer's arguments come
        args.insert(args.index("--") if "--" in args else len(args), "--dry_run")
    if program == "dsbs":
        args += [] if as_written else OVERRIDES.get(args[0], [])
        with _fresh_settings():
            rc = cli.main(args)
        assert rc == 0, f"{where}: `dsbs {' '.join(args)}` exited {rc}"
    elif program == "python" and args[:1] == ["-c"]:
        exec(compile(args[1], where, "exec"), {"__name__": "__doc_snippet__"})
    elif (REPO / program).is_file() or (program == "python" and (REPO / args[0]).is_file()):
        # a script of the repository (launch/*.sh, bench/*.py), in its own process
        script = (
            [sys.executable, str(REPO / args[0]), *args[1:]]
            if program == "python"
            else [
                str(REPO / program),
                *args,
            ]
        )
        done = subprocess.run(script, capture_output=True, text=True, timeout=300)  # in ws/repo
        assert done.returncode == 0, f"{where}: {shlex.join(script)}: {done.stderr[-2000:]}"
    else:
        raise AssertionError(f"{where}: the test does not know how to run {program!r}")


def run_python(block: Block, ws: pathlib.Path) -> None:
    code = "\n".join(block.body)
    for big, small in SNIPPET_SIZES.items():
        code = code.replace(big, small)
    if "transformers" in code:
        pytest.importorskip("transformers")
        pytest.importorskip("torch")
    with _fresh_settings():
        exec(compile(_rewrite(code, ws), block.where, "exec"), {"__name__": "__doc_snippet__"})


# --- the tests -------------------------------------------------------------------------------


def test_every_command_block_is_marked():
    """A fenced block with a command says whether it runs (and why not, if it does not)."""
    unmarked = [b.where for b in _blocks() if b.mark is None]
    assert not unmarked, f"blocks with commands and no <!-- doc-test: ... --> mark: {unmarked}"
    for block in _blocks():
        assert block.mark in ("run", "run as written", "dry_run") or block.mark.startswith(
            "not run: "
        ), block.where


def test_doc_files_are_all_listed():
    on_disk = {"README.md", "bench/README.md"} | {
        f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")
    }
    assert on_disk == set(DOC_FILES) | UNCHECKED


def _inline_commands() -> list[tuple[str, str]]:
    out = []
    for path in DOC_FILES:
        text = (REPO / path).read_text()
        for match in re.finditer(r"`(dsbs [^`]+)`", text):
            line = text.count("\n", 0, match.start()) + 1
            out.append((f"{path}:{line}", match.group(1).replace("\\|", "|")))
    return out


def test_inline_commands_name_real_flags():
    """`dsbs CMD --flag` in the text (tables, sentences): the command and its flags exist."""
    commands = _inline_commands()
    assert len(commands) > 20
    for where, command in commands:
        check_flags(command, where)


@pytest.mark.parametrize("block", _blocks(), ids=lambda b: b.where)
def test_doc_block(block: Block, in_workspace):
    for command in [] if block.is_python else block.commands():
        check_flags(command, block.where)
    if block.mark is None or block.mark.startswith("not run: "):
        pytest.skip(f"{block.where}: {block.mark or 'unmarked'}")
    if block.is_python:
        run_python(block, in_workspace)
        return
    for command in block.commands():
        run_command(
            command, in_workspace, block.mark == "dry_run", block.where,
            as_written=block.mark == "run as written",
        )  # fmt: skip


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_says_every_default(command):
    """`dsbs CMD --help` gives each option's default where it has one (as the docs state them)."""
    parser = cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cmd_parser = sub.choices[command]
    formatter = cmd_parser._get_formatter()
    for action in cmd_parser._actions:
        default = action.default
        if (
            not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or (isinstance(default, (str, list, tuple)) and not default)
        ):
            continue
        shown = formatter._get_help_string(action) or ""
        assert "default" in shown, f"dsbs {command} --help: {action.option_strings[-1]}: {shown!r}"
