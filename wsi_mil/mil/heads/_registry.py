"""The MIL head registry (torch-free): one entry per head name, filled by two decorators.

A head registers in two halves, so configs and ``--help`` know every head without loading torch:

- :func:`register_options` on the head's options model (a :class:`HeadOptions`, in the torch-free
  :mod:`wsi_mil.mil.heads.options`) records the name, the model and a one-line description;
- :func:`register_head` on the ``nn.Module`` class (in the head's own module) adds the class to
  that entry.

The names of :func:`list_heads` come from here only: the CLI help, the ``train.head`` field
description and the unknown-head error all read it. :func:`parse_head_options` is the one place
where a mapping of options becomes its typed model (unknown or mistyped keys are a
:class:`~wsi_mil.errors.ConfigError` naming the key).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import Field, ValidationError

from wsi_mil.config import StrictModel, format_validation_error
from wsi_mil.errors import ConfigError

if TYPE_CHECKING:
    from wsi_mil.mil.heads.base import MILHead


@dataclass(frozen=True)
class FloatRange:
    """A float hyper-parameter in ``[low, high]`` (sampled on a log scale when ``log``)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An int hyper-parameter in ``[low, high]`` (sampled on a log scale when ``log``)."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """A hyper-parameter taking one of ``choices`` (ints, floats, strings, bools or None)."""

    choices: tuple[Any, ...]


#: a search space: config key -> its range. Keys are ``TrainConfig`` fields (``lr``) or
#: ``head_options.<option>`` (as in ``--set``); read by :mod:`wsi_mil.mil.tuning` (Optuna).
SearchSpace = dict[str, FloatRange | IntRange | Choice]

#: the training loop's part of every head's default space
LOOP_SPACE: SearchSpace = {
    "lr": FloatRange(1e-4, 3e-2, log=True),
    "weight_decay": FloatRange(1e-5, 1.0, log=True),
}


#: bags of at least this many tiles (median over the training bags) are slides, fewer are bags of
#: instances: ``tile_init: auto`` starts from the contrast direction and ``bag_centring: auto`` centres on slides
SLIDE_BAG_MIN_TILES = 200

#: ``feature_components: auto`` on slides: this many whitened principal components of the training tiles,
#: for features of at least AUTO_COMPONENTS_MIN_DIM dimensions (fewer: all of them kept, no projection;
#: keeping every component loses what the projection gains: docs/mil-defaults.md)
AUTO_COMPONENTS = 128
AUTO_COMPONENTS_MIN_DIM = 2 * AUTO_COMPONENTS


def too_many_components(components: int, dim: int) -> str:
    """The one-line error for ``feature_components`` larger than the features' dimension ``dim``."""
    return (f"head_options.feature_components is {components} but the tile features have {dim} dimensions; "
            f"set it to at most {dim}, or to null (every feature) or auto")


class HeadOptions(StrictModel):
    """Base of every head's options model (``train.head_options``); unknown keys are errors.

    ``search_space`` declares what ``train --tune on`` searches for this head (torch- and
    Optuna-free data; the tuning module turns it into Optuna suggestions).
    """

    bag_centring: Literal["auto", "none", "mean", "median", "zscore"] = Field(
        "auto", description="subtract each bag's mean or median tile (per feature, after standardisation) before "
                            "scoring tiles, so a slide's stain or scanner offset cannot decide its top tiles; zscore: "
                            "the mean, then each feature divided by its standard deviation within the bag; auto = "
                            "zscore for classification on slides (median training bag >= 200 tiles) with heads that "
                            "rank tiles (chowder, weldon, max, lse) when feature_components is used, mean there without "
                            "it, else none (docs/mil-defaults.md)")
    feature_components: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="score the tiles in the top K principal components of the training tiles (after "
                            "standardisation and bag_centring), each scaled to unit variance; null = every feature "
                            "as it is; auto = 128 where bag_centring auto centres (slides) and the features have "
                            ">= 256 dimensions, else null (docs/mil-defaults.md)")

    search_space: ClassVar[SearchSpace] = LOOP_SPACE
    #: whether ``bag_centring: auto`` centres slides for this head (heads that rank tiles; not mean pooling)
    centres_slides: ClassVar[bool] = False

    def for_bags(self, task: str, median_tiles: float, tile_init: str, dim: int) -> Self:
        """These options with their data-dependent defaults (``auto``) settled for training bags of
        ``dim``-d tiles whose median holds ``median_tiles`` tiles, for ``task`` and the loop's
        ``tile_init``. The base settles ``bag_centring`` and ``feature_components``; heads with ``auto``
        options of their own extend it (and call it)."""
        slides = self.centres_slides and task == "classification" and median_tiles >= SLIDE_BAG_MIN_TILES
        components = self.feature_components
        if isinstance(components, int) and components > dim:
            raise ConfigError(too_many_components(components, dim))
        if components == "auto":
            components = AUTO_COMPONENTS if slides and dim >= AUTO_COMPONENTS_MIN_DIM else None
        centring = self.bag_centring
        if centring == "auto":  # the components were measured on z-scored slides; alone, the mean centres better
            centring = ("zscore" if components is not None else "mean") if slides else "none"
        update = {"feature_components": components, "bag_centring": centring}
        return self.model_copy(update=update) if update != {k: getattr(self, k) for k in update} else self


OptionsT = TypeVar("OptionsT", bound=HeadOptions)
HeadT = TypeVar("HeadT", bound="MILHead")


@dataclass
class HeadEntry:
    """A registered head: its options model, a one-line description, and (once its module is
    imported) its ``nn.Module`` class."""

    name: str
    options: type[HeadOptions]
    description: str
    cls: type[MILHead] | None = None


_HEADS: dict[str, HeadEntry] = {}


def register_options(name: str, description: str) -> Callable[[type[OptionsT]], type[OptionsT]]:
    """Class decorator: register ``name`` (lower-case, unique) with these options and description.

    One options model may serve several heads (stack the decorator).
    """
    if name != name.lower() or not name.isidentifier():
        raise ValueError(f"MIL head name '{name}' must be a lower-case identifier")

    def add(options: type[OptionsT]) -> type[OptionsT]:
        if name in _HEADS:
            raise ValueError(f"MIL head '{name}' is already registered")
        if not issubclass(options, HeadOptions):
            raise TypeError(f"options of MIL head '{name}' must subclass HeadOptions, got {options!r}")
        _HEADS[name] = HeadEntry(name, options, description)
        return options

    return add


def register_head(name: str) -> Callable[[type[HeadT]], type[HeadT]]:
    """Class decorator on an ``nn.Module`` head: it implements the registered head ``name``."""

    def add(cls: type[HeadT]) -> type[HeadT]:
        entry = _HEADS.get(name)
        if entry is None:
            raise ValueError(f"MIL head '{name}' has no registered options; decorate its options "
                             "model with @register_options first")
        if entry.cls is not None and entry.cls is not cls:
            raise ValueError(f"MIL head '{name}' is already implemented by {entry.cls.__qualname__}")
        entry.cls = cls
        return cls

    return add


def list_heads() -> list[str]:
    """Names of the registered heads, in registration order."""
    return list(_HEADS)


def is_head(name: str) -> bool:
    """Whether ``name`` is a registered head."""
    return name in _HEADS


def head_entry(name: str) -> HeadEntry:
    """The entry of a registered head, or a ConfigError listing the known names."""
    try:
        return _HEADS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown MIL head '{name}'; choose one of {', '.join(_HEADS)}") from None


def heads_help() -> str:
    """``'weldon, chowder, ...'``: the registered names, for help texts."""
    return ", ".join(_HEADS)


def parse_head_options(name: str, options: Mapping[str, Any] | HeadOptions | None = None) -> HeadOptions:
    """The typed options of head ``name`` from a mapping (defaults filled in), validated here once.

    An options object already of the head's type is returned as it is; one of another head's type
    is a ConfigError.
    """
    model = head_entry(name).options
    if isinstance(options, HeadOptions):
        if not isinstance(options, model):
            raise ConfigError(f"head_options of '{name}': expected {model.__name__}, got {type(options).__name__}")
        return options
    try:
        return model.model_validate({} if options is None else options)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"head_options of '{name}'")) from exc
