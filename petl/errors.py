"""One error type for bad user input: the CLI prints its message as one line and exits non-zero."""


class PetlError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""


class Interrupted(KeyboardInterrupt):
    """A run the user stopped (Ctrl+C) before it finished: the message says what was kept and how to go on."""


def exit_status(action, *args, **kwargs) -> int:
    """Run a CLI's work: bad input (a PetlError, or HfArgumentParser's ValueError) becomes one
    `error: ...` line on stderr and exit status 2; a run stopped early (Interrupted) one `interrupted: ...`
    line and 130, as for Ctrl+C; otherwise the action's own status (default 0)."""
    import sys

    try:
        try:
            status = action(*args, **kwargs)
        except PetlError:
            raise
        except ValueError as err:  # argument parsing
            raise PetlError(str(err).splitlines()[0]) from None
    except PetlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


def invoked_as(command: str, module_form: str) -> str:
    """The program name for usage lines: the console command when run as one, else `python -m ...`."""
    import sys
    from pathlib import Path

    return command if Path(sys.argv[0]).name == command else module_form
