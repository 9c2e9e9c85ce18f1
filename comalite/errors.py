"""The errors a user can fix. The command line prints their message alone (no traceback; ``--debug`` or
``COMALITE_DEBUG=1`` shows it); each message names the file, row or setting and what to do."""
from __future__ import annotations


class ComaliteError(Exception):
    """Base of every error caused by input, settings or folders rather than by a bug."""


class ConfigError(ComaliteError, ValueError):
    """An unknown setting, a value of the wrong type or outside its choices."""


class DataFormatError(ComaliteError, ValueError):
    """A data file that cannot be used as is; the message names the file, row, field and the fix."""


class UnknownDatasetError(ConfigError, KeyError):
    """An evaluation dataset name the registry does not know."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class CheckpointError(ComaliteError, OSError):
    """A backbone checkpoint that is missing, not a checkpoint, or not reachable offline."""


class RunConflictError(ComaliteError):
    """A run folder holds a run made from other settings or inputs than the ones asked for."""


class RunLockedError(ComaliteError):
    """Another process is writing into the same run folder."""


class NonFiniteLossError(ComaliteError, RuntimeError):
    """The loss (or gradient norm) became NaN/inf or stayed far above its recent level; the last good
    checkpoint was kept."""


class InputError(ComaliteError, ValueError):
    """An input handed to ``EmbeddingModel.encode`` or an image search that cannot be used: of an unknown
    type, or an image file that is not there; the message names the item."""


class SearchIndexError(ComaliteError):
    """A saved image index that cannot be used as asked: not an index file, or made by another model."""


class CorruptFileError(ComaliteError):
    """A weight, checkpoint or record file that is truncated, unreadable, or differs from the sha256 recorded
    when it was written; the message names the file and how to restore or redo it."""


class ChecksumError(CheckpointError, CorruptFileError):
    """A shipped/built backbone checkpoint whose files differ from its ``CHECKSUMS`` listing (or whose listing
    is missing or malformed): an error, never a rebuild over it."""
