"""User-facing errors: one clear line, no traceback.

Everything a user can get wrong (config, data, checkpoints, numerics) raises a subclass of
:class:`ReprlabError`; the CLI prints ``reprlab: error: <message>`` and exits with status 2.
"""


class ReprlabError(Exception):
    """An error whose message is complete on its own and is shown to the user as one line."""

    exit_code = 2

    def __str__(self) -> str:  # keep it one line whatever the caller passed
        return " ".join(str(self.args[0]).split()) if self.args else self.__class__.__name__


class ConfigError(ReprlabError):
    """A config key is unknown or its value is not what the key expects."""


class DataError(ReprlabError):
    """A data set is missing, malformed, or violates the protocol (e.g. a class with one image)."""


class CheckpointError(ReprlabError):
    """A checkpoint cannot be found or read."""


class NonFiniteLossError(ReprlabError):
    """Training produced a NaN or infinite loss."""


class StorageError(ReprlabError):
    """Run storage (a local directory or an s3:// URI) cannot be resolved, reached or written."""


class Interrupted(ReprlabError):
    """Ctrl-C (exit status 130) or SIGTERM (143): what was kept and how to continue, one line."""
