"""Errors that the CLI reports as one line, with exit code 2, and no traceback."""


class UserError(Exception):
    """Bad user input: a file, a flag or a config. The message names where (file:line: field)."""


def located(path: object, line: int | None, message: str, field: str | None = None) -> UserError:
    """Builds a UserError whose message reads `path:line: field 'f': message`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    what = f"field '{field}': {message}" if field else message
    return UserError(f"{where}: {what}")
