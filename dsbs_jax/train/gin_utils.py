"""gin the way T5X users expect: --gin_file, --gin.NAME=value, --gin_search_paths.

The package's own `gin_configs/` folder is always on the search path, so
`--gin_file=runs/dsbs.gin` works from any directory, as does a path relative to the current one.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import logging
import os
import pathlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

import gin
from gin import config_parser

from dsbs_jax.errors import UserError

PACKAGE_GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"


def model_gin(name: str) -> str:
    """The gin file of a model: `quickstart` -> models/quickstart.gin, or a .gin path."""
    if name.endswith(".gin"):
        if not os.path.isfile(name):
            raise UserError(f"--model {name}: no such gin file")
        return os.path.abspath(name)
    folder = PACKAGE_GIN_DIR / "models"
    if not (folder / f"{name}.gin").is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.gin")))
        raise UserError(f"--model {name!r}: not a model gin; known: {known}")
    return f"models/{name}.gin"


_REFERENCE = re.compile(r"(^|[\[(,\s])[@%][A-Za-z_]")


def _literal_or_string(binding: str) -> str:
    """T5X wants --gin.MODEL_DIR=\\"'/path'\\"; a bare path or name is also taken, as a string."""
    name, value = (s.strip() for s in binding.split("=", 1))
    if _REFERENCE.search(value):  # @configurable or %MACRO, alone or inside a list
        return binding
    try:
        ast.literal_eval(value)
        return binding
    except (ValueError, SyntaxError):
        return f"{name} = {value!r}"


def parse_gin(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    check_required: bool = True,
) -> None:
    """Makes these gin files and bindings the whole gin config (what an earlier run of the same
    process bound is cleared first); errors name the file (and line) or the binding.

    The search paths (the current folder, `search_paths`, the package's gin_configs/) hold for
    this parse only: gin keeps its list for the process, so it is put back afterwards."""
    if not gin_files:
        raise UserError("no --gin_file given (for example --gin_file=runs/dsbs.gin)")
    files = [_resolve(f, [*search_paths, str(PACKAGE_GIN_DIR)]) for f in gin_files]
    gin.clear_config()
    prefixes = gin.config._LOCATION_PREFIXES  # gin has no public way to remove a search path
    saved = list(prefixes)
    for path in [os.getcwd(), *search_paths, str(PACKAGE_GIN_DIR)]:
        gin.add_config_file_search_path(path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # gin logs every search-path miss of an include as an error
    try:
        gin.parse_config_files_and_bindings(
            files, [_literal_or_string(b) for b in bindings], finalize_config=False
        )
    except OSError as e:
        raise UserError(f"gin: {e}") from None
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise UserError(f"gin: {str(e).splitlines()[0] if str(e) else e!r}") from None
    finally:
        root.setLevel(level)
        prefixes[:] = saved
    if check_required:  # a command that reads only part of the config (dsbs compile) skips it
        _check_required_macros(files, [*search_paths, str(PACKAGE_GIN_DIR)])
    _check_macros_used(bindings)


# Macros our code reads itself (`gin.query_parameter`), used whether or not a gin file does.
CODE_MACROS = frozenset({"VOCABULARY_PATH"})
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")


def _used_macros() -> set[str]:
    """The macros some binding of the parsed config refers to (`%NAME`)."""
    used: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, gin.config.ConfigurableReference):
            name, _, kind = value.scoped_selector.partition("/")
            if kind == "gin.macro":
                used.add(name)
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for params in gin.config._CONFIG.values():  # gin has no public list of references
        for value in params.values():
            walk(value)
    return used


def _check_macros_used(bindings: Sequence[str]) -> None:
    """A macro set on the command line that nothing uses is a typo (`--gin.TRAIN_STEP=7`): one
    line naming it and the closest macro the config does use, instead of a silent no-op."""
    used = _used_macros() | CODE_MACROS
    for binding in bindings:
        found = _MACRO_BINDING.match(binding)
        if found is None or found.group(1) in used:
            continue
        name = found.group(1)
        close = difflib.get_close_matches(name, sorted(used), n=1)
        hint = f"; did you mean --gin.{close[0]}?" if close else ""
        raise UserError(f"--gin.{name}: no gin file or setting uses the macro {name}{hint}")


def file_macros(path: str | os.PathLike) -> dict[str, Any]:
    """The macros a gin file (a run's config.gin) binds, `NAME = value`, as gin's own parser
    reads them; the process's gin config is left as it is. A value that refers to something
    (`%OTHER`, `@fn()`) stays gin's reference object. A file gin cannot parse binds nothing."""
    macros: dict[str, Any] = {}
    delegate = gin.config.ParserDelegate(skip_unknown=True)
    try:
        with open(path) as f:
            for statement in config_parser.ConfigParser(f, delegate):
                if (
                    isinstance(statement, config_parser.BindingStatement)
                    and not statement.scope
                    and not statement.arg_name
                ):
                    macros[statement.selector] = statement.value
    except (SyntaxError, ValueError):
        return {}
    return macros


@contextlib.contextmanager
def scoped_config(
    gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()
) -> Iterator[None]:
    """`parse_gin`, cleared again on exit: for a caller that runs several configs in one process
    (a sweep), so that no binding of one run is left for code that runs after it."""
    parse_gin(gin_files, bindings, search_paths)
    try:
        yield
    finally:
        gin.clear_config()


_REQUIRED = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*%gin\.REQUIRED\s*(#.*)?$")
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]")


def _required_macros(
    path: str, search_paths: Sequence[str], seen: set[str]
) -> dict[str, tuple[str, int]]:
    """{macro: (gin file, line) marking it %gin.REQUIRED}, following `include` lines."""
    if path in seen or not os.path.isfile(path):
        return {}
    seen.add(path)
    found: dict[str, tuple[str, int]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            include = _INCLUDE.match(line)
            if include:
                try:
                    inner = _resolve(include.group(1), search_paths)
                except UserError:
                    continue  # gin itself already reported a missing include
                found.update(_required_macros(inner, search_paths, seen))
            required = _REQUIRED.match(line)
            if required:
                found[required.group(1)] = (path, number)
    return found


def _check_required_macros(files: Sequence[str], search_paths: Sequence[str]) -> None:
    """One line for a `%gin.REQUIRED` macro left unset: its name and the file requiring it."""
    seen: set[str] = set()
    required: dict[str, tuple[str, int]] = {}
    for path in files:
        required.update(_required_macros(path, search_paths, seen))
    for name, (path, line) in required.items():
        try:
            value = gin.query_parameter(f"%{name}")
        except ValueError:
            continue
        if str(value) == "%gin.REQUIRED":
            raise UserError(
                f"{_shown(path)}:{line}: {name} is %gin.REQUIRED and not set; pass --gin.{name}=..."
            )


def _shown(path: str) -> str:
    """A package gin file as the --gin_file name that finds it (`runs/base.gin`)."""
    try:
        return str(pathlib.Path(path).resolve().relative_to(PACKAGE_GIN_DIR))
    except ValueError:
        return path


def _resolve(path: str, search_paths: Sequence[str]) -> str:
    if os.path.exists(path):
        return path
    for folder in search_paths:
        candidate = os.path.join(folder, path)
        if os.path.exists(candidate):
            return candidate
    raise UserError(f"{path}: gin file not found here or in {', '.join(search_paths)}")
