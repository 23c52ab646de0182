"""timm encoders: one registry of ready-made entries, one factory, offline weights, folders.

Modules, lowest first: ``dataconfig`` (:class:`DataConfig`, no torch), ``registry`` (entries,
name resolution), ``weights`` (checkpoints, hashes), ``folder`` (encoder folders), ``factory``
(:func:`create_encoder`, which uses all the others).

>>> enc = create_encoder("resnet18", "random")          # tests and baselines only
>>> enc = create_encoder("resnet50_trunc", "timm")       # local timm cache, never downloads
>>> enc = create_encoder(None, "JOB/encoders/simclr")   # a folder from 'wsi-mil pretrain'
"""

from wsi_mil._lazy import lazy_exports

_EXPORTS = {
    "DATA_CONFIG_KEYS": "dataconfig",
    "DataConfig": "dataconfig",
    "ENTRIES": "registry",
    "Encoder": "factory",
    "EncoderEntry": "registry",
    "create_encoder": "factory",
    "embed_dim_of": "folder",
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
