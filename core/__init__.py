"""anybind: ImageBind-style any-modality retrieval.

Modality plugins are discovered through pluggy entry points; every modality is embedded into one
image-anchored space::

    import anybind
    space = anybind.load_space("clip:openai/clip-vit-base-patch32")
    vectors = space.embed("text", ["a dog", "a violin"])   # float32 (2, d), unit norm
"""

from importlib import metadata

from .devices import Device, resolve_device
from .encoder import Encoder, EncoderFactory, EncoderOptions
from .errors import (
    AnybindError,
    DecodeError,
    DuplicateNameError,
    EmbeddingError,
    ItemError,
    MetadataError,
    ModelLoadError,
    QueryError,
    RegistrationError,
    SpaceError,
    StoreError,
    UnknownNameError,
)
from .hookspecs import hookimpl
from .modality import Modality, detect
from .plugin_host import PluginHost, PluginInfo, get_host, set_host
from .space import EmbedResult, Space
from .space_config import RouteConfig, SpaceConfig
from .space_loader import load_space
from .store import Hit, SearchResult, Store

try:
    __version__ = metadata.version("anybind")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AnybindError",
    "DecodeError",
    "Device",
    "DuplicateNameError",
    "EmbedResult",
    "EmbeddingError",
    "Encoder",
    "EncoderFactory",
    "EncoderOptions",
    "Hit",
    "ItemError",
    "MetadataError",
    "Modality",
    "ModelLoadError",
    "PluginHost",
    "PluginInfo",
    "QueryError",
    "RegistrationError",
    "RouteConfig",
    "SearchResult",
    "Space",
    "SpaceConfig",
    "SpaceError",
    "Store",
    "StoreError",
    "UnknownNameError",
    "__version__",
    "detect",
    "get_host",
    "hookimpl",
    "load_space",
    "resolve_device",
    "set_host",
]
