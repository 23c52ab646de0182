"""Errors a user can act on.

Every error raised on bad input is a :class:`WsiMilError` whose message is one line that names
the file (or key) and says what is wrong and how to fix it. The CLI prints that line and exits
with status 2; batch stages record it as the slide's failure reason and carry on.
"""

from __future__ import annotations


class WsiMilError(Exception):
    """Base class: a problem with the user's input or environment, with a one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(WsiMilError):
    """A configuration file or CLI override is invalid (unknown key, wrong type, bad value)."""


class SlideError(WsiMilError):
    """A slide cannot be opened, read, or has no usable physical scale (mpp)."""


class StoreError(WsiMilError):
    """A patch store, feature file or model run is missing, incomplete or of the wrong kind."""


class LabelsError(WsiMilError):
    """A labels CSV has unknown, duplicate or missing slides or labels."""


class EncoderError(WsiMilError):
    """An encoder architecture or its weights cannot be loaded."""
