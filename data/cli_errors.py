"""How every `recap` command ends on an error. Invariants:

- A user error (a bad argument, path, URL or selection; something unknown to the store or the API; a
  missing token; a server that does not answer) prints ONE line on stderr, `error: ...`, and exits
  with status 2. No traceback, no box.
- What counts as a user error: `UserError`, click's usage errors, OS errors that name a path, and the
  library exception types a command group declares with `user_errors(...)` when it is imported.
- Anything else is a bug: one line and status 1, or the full traceback with `recap --verbose`.

Commands raise; only `run` (the root's main) catches, so no command carries its own try/except.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

from typer import _click as click  # typer's own copy of click: the classes its commands raise
from typer import exceptions as texc

EXIT_USER_ERROR = 2
EXIT_BUG = 1


class UserError(Exception):
    """Something the caller asked for cannot be done as asked; the message says what to change."""


_user_error_types: list[type[BaseException]] = [UserError]
_path_errors = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_state = {"verbose": False}


def user_errors(*types: type[BaseException]) -> None:
    """Declare library exception types whose message is meant for the caller (e.g. the store's
    `StoreError`): raised from a command, they end it like a `UserError`."""
    _user_error_types.extend(t for t in types if t not in _user_error_types)


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "failed"


def _fail(message: str, code: int) -> NoReturn:
    print(f"error: {_one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def _message(e: BaseException) -> str:
    if isinstance(e, _path_errors) and e.filename is not None:
        return f"{e.strerror or type(e).__name__}: {e.filename}"
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])  # str() of a KeyError is the repr of its argument
    return str(e) or type(e).__name__


def run(command: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> NoReturn:
    """Run a click/typer command the way every `recap` entry point does (the invariants above)."""
    try:
        rv = command.main(args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except texc.Abort:
        _fail("aborted", EXIT_BUG)
    except click.ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(e, click.exceptions.UsageError) and ctx else ""
        _fail(e.format_message() + hint, EXIT_USER_ERROR)
    except texc.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        user = isinstance(e, (*_user_error_types, *_path_errors))
        if _state["verbose"]:
            traceback.print_exc()
        if user:
            _fail(_message(e), EXIT_USER_ERROR)
        _fail(f"{_message(e)} (unexpected {type(e).__name__}: `recap --verbose ...` shows the traceback)", EXIT_BUG)
    sys.exit(rv if isinstance(rv, int) else 0)
