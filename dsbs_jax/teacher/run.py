"""Stage 1 for one task and split, as `dsbs teach` runs it: which inputs, which teacher, how it
samples, then `extract.extract` and the statistics file.

`teach(task, InputSelection(split, ...), out, backend=...)` writes OUT/<task>_<split>.jsonl (one
record per input, in input order), OUT/<task>_<split>.stats.json and, for the openai backend,
the request cache OUT/cache/ that makes a rerun resume. `prompt_for` is the prompt of one input.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import urllib.parse
from collections.abc import Callable

from dsbs_jax.data import paths
from dsbs_jax.data.cards import TaskCard, load_card
from dsbs_jax.data.sources import read_jsonl, read_released
from dsbs_jax.errors import UserError
from dsbs_jax.records import Record
from dsbs_jax.teacher.backends.base import Backend, SamplingParams
from dsbs_jax.teacher.backends.files import FilesBackend
from dsbs_jax.teacher.backends.openai import OpenAIBackend
from dsbs_jax.teacher.backends.simulated import SimulatedBackend
from dsbs_jax.teacher.extract import Stats, extract, write_stats
from dsbs_jax.teacher.prompts import build_prompt, load_exemplars

BACKENDS = ("openai", "files", "simulated")


@dataclasses.dataclass(frozen=True)
class InputSelection:
    """Which inputs to teach: `inputs` (a JSONL of the card's fields), else the card's gold file
    of `split` in `source_dir` (default $DSBS_DATA_DIR/<task>); the first `limit` of them."""

    split: str = "train"
    inputs: str | os.PathLike | None = None
    source_dir: str | os.PathLike | None = None
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class OpenAISettings:
    """How the openai backend reaches its server (`OpenAIBackend`'s arguments but the seed)."""

    base_url: str = "https://api.openai.com/v1"
    model: str | None = None
    endpoint: str = "chat"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 6
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0


def default_backend(card: TaskCard) -> str:
    """`simulated` for the built-in task, `files` (outputs made already) otherwise."""
    return "simulated" if card.reader == "builtin" else "files"


def source_dir(card: TaskCard, given: str | os.PathLike | None) -> pathlib.Path:
    """The folder of the card's gold files: `given`, else $DSBS_DATA_DIR/<task>."""
    if given:
        return pathlib.Path(given)
    # The same variable as the prepared data's root (`data.paths`), read here as the root of the
    # released source folders, one per task (no TFDS_DATA_DIR fallback: that holds TFDS data).
    if os.environ.get(paths.DATA_DIR_ENV):
        return pathlib.Path(os.environ[paths.DATA_DIR_ENV]) / card.name
    raise UserError("--source_dir: required (or --inputs FILE, or set DSBS_DATA_DIR)")


def released_split(card: TaskCard, split: str) -> str:
    """The released split that holds `split`'s inputs (one line when the card has none)."""
    mapped = card.released_split(split)
    if mapped in card.gold_files:
        return mapped
    if split in ("valid", "validation") and card.validation_fraction > 0:
        raise UserError(
            f"{card.name} has no released validation split; teach `train` "
            "(`dsbs prepare` carves validation from it)"
        )
    raise UserError(f"{card.name} has no split {split!r}; splits: {', '.join(card.gold_files)}")


def load_inputs(card: TaskCard, selection: InputSelection) -> list[Record]:
    """The inputs to teach, in order: the --inputs JSONL, or the card's gold file of the split."""
    if selection.inputs:
        records = read_jsonl(card, selection.inputs, selection.split)
    else:
        source = source_dir(card, selection.source_dir)
        split = released_split(card, selection.split)
        if card.reader == "released":
            records = read_released(card, source, split, require_teacher=False)
        else:
            path = source / card.gold_files[split]
            if not path.exists():
                raise UserError(
                    f"{path}: no such file (the {card.name} inputs of {selection.split})"
                )
            records = read_jsonl(card, path, selection.split)
    if selection.limit is not None:
        if selection.limit < 1:
            raise UserError(f"--limit {selection.limit}: must be at least 1")
        records = records[: selection.limit]
    if not records:
        raise UserError("no inputs")
    return records


def make_backend(
    card: TaskCard,
    name: str,
    selection: InputSelection,
    *,
    teacher_file: str | os.PathLike | None = None,
    seed: int | None = None,
    openai: OpenAISettings | None = None,
) -> Backend:
    """The teacher `name` (one of BACKENDS) for these inputs. files: `teacher_file`, else the
    --inputs JSONL's `raw`, else the released llm/<split>_CoT_*.json next to the gold files."""
    if name == "openai":
        return OpenAIBackend(**dataclasses.asdict(openai or OpenAISettings()), seed=seed or 0)
    if name == "files":
        if teacher_file:
            return FilesBackend.from_jsonl(card, teacher_file)
        if selection.inputs:
            return FilesBackend.from_jsonl(card, selection.inputs)
        return FilesBackend.from_released(
            card, source_dir(card, selection.source_dir), released_split(card, selection.split)
        )
    if name == "simulated":
        return SimulatedBackend(card, seed=seed or 0)
    raise UserError(f"--backend {name!r}: expected one of {', '.join(BACKENDS)}")


def check_outputs_match(
    backend: Backend, inputs: list[Record], log: Callable[[str], None] = print
) -> None:
    """Teacher outputs made already must answer some of the inputs: none is an error (before
    anything is written), some is said."""
    matched = getattr(backend, "matched", None)
    if matched is None:
        return
    found = matched(inputs)
    if found == 0:
        raise UserError(
            f"{backend.source}: no output matches any of the {len(inputs)} inputs (by id, then "
            f"by input text; the first input's id is {inputs[0].id!r})"
        )
    if found < len(inputs):
        log(
            f"teach: {len(inputs) - found} of {len(inputs)} inputs have no output in "
            f"{backend.source} (status no_teacher)"
        )


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the teacher is asked to sample (`dsbs teach`'s sampling flags). temperature None: 0,
    or 0.7 when n > 1; stop None: the card's cut; the seed is sent to an openai server and seeds
    the simulated teacher."""

    temperature: float | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] | None = None
    n: int = 1
    top_p: float | None = None
    seed: int | None = None
    self_consistency: bool = False

    def params(self, card: TaskCard, backend: str) -> SamplingParams:
        """The backend's sampling parameters, the defaults settled for this card and backend."""
        if self.n < 1:
            raise UserError(f"--n {self.n}: must be at least 1")
        if self.self_consistency and self.n < 2:
            raise UserError("--self_consistency needs --n 2 or more (e.g. --n 5)")
        if self.max_tokens < 1:
            raise UserError(f"--max_tokens {self.max_tokens}: must be at least 1")
        temperature = self.temperature
        if temperature is None:
            temperature = 0.7 if self.n > 1 else 0.0
        stops = tuple(self.stop) if self.stop else ((card.parse.cut,) if card.parse.cut else ())
        return SamplingParams(
            temperature=temperature,
            max_tokens=self.max_tokens,
            stop=stops,
            n=self.n,
            top_p=self.top_p,
            seed=self.seed if backend == "openai" else None,
        )


def _card(task: str | TaskCard) -> TaskCard:
    return task if isinstance(task, TaskCard) else load_card(task)


def prompt_for(
    task: str | TaskCard,
    selection: InputSelection,
    index: int = 0,
    exemplars: str | os.PathLike | None = None,
) -> str:
    """The prompt the teacher gets for input `index` (`exemplars`: a file instead of the card's)."""
    card = _card(task)
    shots = load_exemplars(card, exemplars) if exemplars else None
    inputs = load_inputs(card, selection)
    if not 0 <= index < len(inputs):
        raise UserError(f"--index {index}: out of range 0..{len(inputs) - 1}")
    return build_prompt(card, inputs[index].fields, shots)


@dataclasses.dataclass(frozen=True)
class TeachResult:
    """What a stage-1 run wrote, and its statistics."""

    task: str
    split: str
    stats: Stats
    records_path: pathlib.Path
    stats_path: pathlib.Path

    def summary(self) -> str:
        """The final statistics, as `dsbs teach` prints them."""
        return summary(self.task, self.split, self.stats, self.records_path)


def _server(base_url: str) -> str:
    """The base URL as the stats file keeps it (no user or password)."""
    url = urllib.parse.urlsplit(base_url)
    return f"{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}{url.path}"


def teach(
    task: str | TaskCard,
    selection: InputSelection,
    out: str | os.PathLike = "out/teach",
    *,
    backend: str | None = None,
    exemplars: str | os.PathLike | None = None,
    teacher_file: str | os.PathLike | None = None,
    openai: OpenAISettings | None = None,
    sampling: Sampling = Sampling(),
    progress: bool = True,
    progress_every: float = 10.0,
    log: Callable[[str], None] = print,
) -> TeachResult:
    """Stage 1 for one task (a card or its name) and split: asks the teacher (`backend`, default
    `default_backend`) about the selected inputs and writes the records and the statistics under
    `out`. Resumable: a rerun asks again only what got no answer. `log` takes the one line said
    when some inputs have no output made already."""
    card = _card(task)
    backend = backend or default_backend(card)
    shots = load_exemplars(card, exemplars) if exemplars else None
    inputs = load_inputs(card, selection)
    params = sampling.params(card, backend)
    openai = openai or OpenAISettings()
    teacher = make_backend(
        card, backend, selection, teacher_file=teacher_file, seed=sampling.seed, openai=openai
    )
    check_outputs_match(teacher, inputs, log)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / f"{card.name}_{selection.split}.jsonl"
    _, stats = extract(
        card,
        inputs,
        teacher,
        params,
        records_path,
        cache_dir=out / "cache",
        exemplars=shots,
        self_consistency=sampling.self_consistency,
        progress=progress,
        progress_every=progress_every,
    )
    settings = {
        "task": card.name,
        "split": selection.split,
        "backend": backend,
        "model": teacher.model,
        "sampling": params.key(),
        "self_consistency": sampling.self_consistency,
    }
    if backend == "openai":
        settings |= {"endpoint": openai.endpoint, "base_url": _server(openai.base_url)}
    stats_path = out / f"{card.name}_{selection.split}.stats.json"
    write_stats(stats_path, stats, settings)
    return TeachResult(card.name, selection.split, stats, records_path, stats_path)


def summary(task: str, split: str, stats: Stats, records_path: pathlib.Path) -> str:
    """The final statistics, as printed."""
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(stats.statuses.items()))
    lines = [
        f"teach {task} {split}: {stats.inputs} inputs, {stats.unique_prompts} distinct prompts "
        f"({stats.from_cache} from the cache, {stats.requested} asked, {stats.failed} failed) "
        f"in {stats.seconds:.1f} s",
        f"  statuses: {statuses}",
        f"  tokens spent: {stats.prompt_tokens:,} prompt + {stats.completion_tokens:,} completion;"
        f" truncated samples {stats.truncated}; retries {stats.retries}",
    ]
    if stats.sc_agreement is not None:
        lines.append(f"  self-consistency: majority share {100 * stats.sc_agreement:.1f}%")
    if stats.teacher_accuracy is not None:
        lines.append(
            f"  teacher accuracy: {stats.teacher_accuracy:.2f}% "
            f"({stats.correct}/{stats.with_gold} with gold labels)"
        )
    if stats.unreadable_gold:
        lines.append(
            f"  gold labels the metric cannot read: {stats.unreadable_gold} (left out of the "
            "teacher accuracy)"
        )
    lines.append(f"  records: {records_path}")
    return "\n".join(lines)
