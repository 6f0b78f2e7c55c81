"""Errors that the CLI reports as one line, with exit code 2, and no traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class UserError(Exception):
    """Bad user input: a file, a flag or a config. The message names where (file:line: field)."""


def located(path: object, line: int | None, message: str, field: str | None = None) -> UserError:
    """Builds a UserError whose message reads `path:line: field 'f': message`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    what = f"field '{field}': {message}" if field else message
    return UserError(f"{where}: {what}")


def describe_os_error(e: OSError | UnicodeDecodeError) -> str:
    """One line for a file that cannot be used: `path: reason` (no traceback, no errno)."""
    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text (byte {e.start}: {e.reason})"
    reason = e.strerror or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    if isinstance(e, IsADirectoryError):
        reason = "is a directory, expected a file"
    elif isinstance(e, NotADirectoryError):
        reason = "a file is in the way, expected a directory"
    where = e.filename if e.filename is not None else None
    if where is not None and e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}"
    return f"{where}: {reason}" if where is not None else reason


VERBOSE_ENV = "DSBS_VERBOSE"


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """File descriptor 2 points at /dev/null for the block (unless DSBS_VERBOSE is set): for
    native libraries (TensorFlow's and libtpu's start-up) that print there whatever their log
    level says. Python's own errors still reach the caller as exceptions."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        yield
        return
    import sys  # noqa: PLC0415

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def exit_cleanly_on_sigterm() -> object:
    """A SIGTERM (`kill`, a scheduler, a sweep stopping its workers) exits as `sys.exit(143)`
    would, so that `finally` blocks (temporary folders, workers stopped) and cleanup at exit
    (TensorFlow's generated files) run. Returns the handler it replaced. Only the main thread
    may set a handler; elsewhere this does nothing (and returns None)."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def quiet_startup(tensorflow: bool, tf_log_level_from_user: bool = False) -> None:
    """Silences the chatter of TensorFlow, absl, JAX, orbax and asyncio, so stderr holds only
    our lines (and any real crash). `dsbs --verbose` or DSBS_VERBOSE=1 skip this.

    - Native logs: TF_CPP_MIN_LOG_LEVEL=3 unless the user set it (importing jax sets 1, which
      lets TensorFlow's cache and CUDA-probe warnings through). TensorFlow's native libraries
      print their start-up lines ("before InitializeLog", CUDA drivers) straight to file
      descriptor 2 whatever the level says: TensorFlow is imported here once with that
      descriptor pointed at /dev/null, and its GPUs are hidden then (it only feeds data; the
      probe would print a cuInit line later).
    - Python logs: absl (seqio's length advice, orbax's metadata notes and the tracebacks of
      its writer threads when a save fails, CLU's empty logger_cls) and asyncio (tasks orbax
      leaves behind when a checkpoint fails to read) are not shown: a failure reaches our
      code as an exception and is said in one line. Python warnings (deprecations of the libraries, and of their use here)
      are not shown.
    - A RuntimeError "Event loop is closed" that TensorStore's threads report (as unraisable)
      when an orbax read fails and the reads still in flight end after its loop closed is
      dropped; any other exception prints as usual.
    """
    import logging
    import sys
    import warnings

    if not tf_log_level_from_user:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if tensorflow and "tensorflow" not in sys.modules:
        with native_stderr_hidden():
            try:
                import tensorflow as tf  # noqa: PLC0415

                tf.config.set_visible_devices([], "GPU")
            except (ImportError, RuntimeError, ValueError):
                pass
    try:
        from absl import logging as absl_logging  # noqa: PLC0415

        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:
        pass
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")  # ours are printed lines, never warnings
    if not getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
        sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)


def _without_closed_loop_errors(hook):  # noqa: ANN001, ANN202
    def unraisablehook(unraisable):  # noqa: ANN001, ANN202
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(unraisable)

    unraisablehook.drops_closed_loop_errors = True
    return unraisablehook


_NO_SPACE = "No space left on device"
_WRITTEN_FILE = re.compile(r'file "(?P<path>[^"]+)"|(?P<bare>\S*/\S*?)[;:]\s*No space left')


def disk_full(e: BaseException) -> str | None:
    """A full disk (ENOSPC, however a library wrapped it) as one line naming the file being
    written when the library says which; None for any other error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:  # the error, then what it was raised from
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            where = f" writing {e.filename}" if e.filename else ""
            break
        if _NO_SPACE in str(e):
            found = _WRITTEN_FILE.search(str(e))
            path = (found.group("path") or found.group("bare")) if found else None
            where = f" writing {path}" if path else ""
            break
        e = e.__cause__ or e.__context__
    else:
        return None
    return (
        f"no space left on the device{where}; free some space (or choose another output folder) "
        "and run the same command again: what was complete before is kept"
    )


_BYTES = re.compile(r"(?:allocat\w*|needs?)\s+(\d+(?:\.\d+)?)\s*([KMGT]i?B|bytes|B)?", re.I)
_UNITS = {"": 1, "B": 1, "BYTES": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def device_memory_bytes() -> tuple[int | None, str]:
    """(bytes of memory of one device, what it is): HBM where the runtime says, else host RAM."""
    try:
        import jax  # noqa: PLC0415

        device = jax.devices()[0]
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]), f"a {device.device_kind} device"
    except Exception:  # noqa: BLE001 - only for the message
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's memory"
    except (ValueError, OSError):
        return None, "this host's memory"


def out_of_memory(e: BaseException) -> str | None:
    """XLA's RESOURCE_EXHAUSTED as one line: what the step asked for, what the device has, and
    what would help; None for any other error."""
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "Out of memory" not in text:
        return None
    found = _BYTES.search(text)
    asked = ""
    if found:
        amount = float(found.group(1)) * _UNITS[(found.group(2) or "").upper()]
        asked = f" asked for {amount / 2**30:.1f} GiB, and"
    have, what = device_memory_bytes()
    has = f" {what} is {have / 2**30:.1f} GiB" if have else f" {what} is too small"
    return (
        f"out of memory: the step{asked}{has}; try a smaller per-device batch "
        "(--gin.BATCH_SIZE), shorter TASK_FEATURE_LENGTHS, --gin.REMAT_POLICY=\"'full'\", or fewer "
        "eval examples (--gin.train.eval_examples=N; --gin.EVAL_PERIOD=0 skips evaluation); "
        "`dsbs compile` gives a step's memory before a run"
    )
