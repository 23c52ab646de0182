"""timm encoders: one registry of ready-made entries, one factory, offline weights, folders.

>>> enc = create_encoder("resnet18", "random")          # tests and baselines only
>>> enc = create_encoder("resnet50_trunc", "timm")       # local timm cache, never downloads
>>> enc = create_encoder(None, "JOB/encoders/simclr")   # a folder from 'wsi-mil pretrain'
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "DATA_CONFIG_KEYS": "factory",
    "ENTRIES": "registry",
    "Encoder": "factory",
    "EncoderEntry": "registry",
    "create_encoder": "factory",
    "is_encoder_dir": "folder",
    "list_entries": "registry",
    "load_into": "weights",
    "read_encoder_json": "folder",
    "read_state_dict": "weights",
    "resolve_arch": "registry",
    "safe_name": "factory",
    "save_encoder_dir": "folder",
    "state_dict_hash": "weights",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
