"""The one exception type users see: a one-line message and a non-zero exit code."""


def extra_hint(extra: str) -> str:
    """How to install an optional part: the extra's name and the command in a checkout (the project
    is installed from its checkout or a wheel built from it, not from a package index)."""
    return f"install the {extra} extra (pip install -e '.[{extra}]' in the aecompress checkout)"


def env_flag(name: str) -> bool:
    """Whether the environment variable `name` is set on: any value but empty or 0 (AECOMPRESS_DEBUG,
    AECOMPRESS_NO_CUDA)."""
    import os

    return os.environ.get(name, "") not in ("", "0")


class AecError(Exception):
    """An error caused by input, environment or configuration, reported as one line without a traceback."""

    exit_code = 1


class OutputExists(AecError):
    """The output's name is taken and --force was not given (also when another process wrote it
    while this one worked: --skip-existing then skips it)."""


class DeviceError(AecError):
    """The device asked for (--device cuda) cannot run here: every file would fail alike, so a run
    over many files stops at the first instead of failing each in turn."""


class CorruptFileError(AecError):
    """A .aez file that is truncated, damaged or not an .aez file at all."""

    exit_code = 3


class ModelError(AecError):
    """A model package that is missing, unreadable or does not match a file."""

    exit_code = 4


class NonFiniteOutput(ModelError):
    """A graph gave NaN or infinite values: a broken model, or (when decoding) a damaged file whose
    latent is finite but far outside anything the encoder makes."""


class UnknownModelError(ModelError):
    """No model package at hand matches the model id a .aez file names."""


class Terminated(BaseException):
    """SIGTERM (`kill`), raised in the main thread by the command line's handler so that atomic writes
    remove their temporary files and training saves its checkpoint on the way out (a BaseException,
    like KeyboardInterrupt, so no `except Exception` eats it)."""
