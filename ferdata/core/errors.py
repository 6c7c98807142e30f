"""User-facing errors: the CLI prints them as one line and exits with their code."""


class FerdataError(Exception):
    """A fatal, explained failure (bad input, missing table); exit code 1."""

    exit_code = 1


class UsageError(FerdataError):
    """An invalid option or parameter value; exit code 2."""

    exit_code = 2
