"""Exception types. Every user-facing error is one line naming the file or key at fault.

The CLI catches :class:`UdcGuardError`, prints ``error: <message>`` on one line and exits with
the error's ``exit_code``: 2 for bad input, 1 for a service that failed (:class:`ServiceError`);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UdcGuardError(Exception):
    """Base class of errors caused by bad input (config, files, arrays)."""

    exit_code: int = 2


class ServiceError(UdcGuardError):
    """A service the run needs (the S3 store, the Prefect server) is unreachable or failed."""

    exit_code = 1


class ConfigError(UdcGuardError):
    """params.yaml (or an override) is invalid; the message names the key path."""


class UnknownNameError(UdcGuardError, KeyError):
    """A name (layout, restorer, attack, ...) is not registered; lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImageError(UdcGuardError):
    """An image file is missing, corrupt, or of an unsupported kind; names the file."""


class PSFError(UdcGuardError):
    """A PSF array has the wrong shape or invalid values; names its source."""
