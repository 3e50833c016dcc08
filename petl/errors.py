"""One error type for bad user input: the CLI prints its message as one line and exits non-zero."""


class PetlError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""
