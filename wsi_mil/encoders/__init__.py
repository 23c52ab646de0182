"""timm encoders: one registry of ready-made entries, one factory, offline weights, folders.

Modules, lowest first: ``dataconfig`` (:class:`DataConfig`, no torch), ``registry`` (entries,
name resolution), ``weights`` (checkpoints, hashes), ``folder`` (encoder folders), ``factory``
(:func:`create_encoder`, which uses all the others).

>>> enc = create_encoder("resnet18", "random")          # tests and baselines only
>>> enc = create_encoder("resnet50_trunc", "timm")       # local timm cache, never downloads
>>> enc = create_encoder(None, "JOB/encoders/simclr")   # a folder from 'wsi-mil pretrain'
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "dataconfig": ("DATA_CONFIG_KEYS", "DataConfig"),
    "factory": ("Encoder", "create_encoder", "safe_name"),
    "folder": ("embed_dim_of", "is_encoder_dir", "read_encoder_json", "save_encoder_dir"),
    "registry": ("ENTRIES", "EncoderEntry", "list_entries", "resolve_arch"),
    "weights": ("load_into", "read_state_dict", "state_dict_hash"),
})
