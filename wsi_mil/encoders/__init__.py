"""timm encoders: one registry of ready-made entries, one factory, offline weights, folders.

Modules, lowest first: ``dataconfig`` (:class:`DataConfig`, no torch), ``entry`` and
``foundation`` (the recipes; the pathology foundation models' as their publishers give them),
``registry`` (entries, name resolution), ``sources`` (publisher folders, the local Hugging Face
cache, the missing-weights advice), ``manifest`` (pinned sha256), ``weights`` (checkpoints,
hashes), ``convert`` (transformers -> timm keys), ``build`` (timm models, pooling), ``folder``
(encoder folders), ``factory`` (:func:`create_encoder`, which uses all the others).

>>> enc = create_encoder("resnet18", "random")          # tests and baselines only
>>> enc = create_encoder("resnet50_trunc", "timm")       # local timm cache, never downloads
>>> enc = create_encoder(None, "JOB/encoders/simclr")   # a folder from 'wsi-mil pretrain'
>>> enc = create_encoder("uni", "/models/UNI")           # huggingface-cli download MahmoodLab/UNI --local-dir UNI
>>> enc = create_encoder("virchow2", "hub")              # the local Hugging Face cache, no network
"""

from wsi_mil._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "build": ("ClsMeanPool", "build_backbone", "count_parameters", "with_pooling"),
    "convert": ("hf_to_timm",),
    "dataconfig": ("DATA_CONFIG_KEYS", "DataConfig"),
    "factory": ("Encoder", "create_encoder", "safe_name"),
    "folder": ("embed_dim_of", "is_encoder_dir", "read_encoder_json", "save_encoder_dir"),
    "manifest": ("WeightsManifest", "file_sha256", "load_manifest"),
    "registry": ("ENTRIES", "EncoderEntry", "list_entries", "resolve_arch"),
    "sources": ("find_in_hf_cache", "hf_cache_dir", "weights_found"),
    "weights": ("load_into", "read_state_dict", "state_dict_hash"),
})
