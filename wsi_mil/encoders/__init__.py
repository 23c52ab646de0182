"""timm encoders: one registry of ready-made entries, one factory, offline weights, folders.

>>> enc = create_encoder("resnet18", "random")          # tests and baselines only
>>> enc = create_encoder("resnet50_trunc", "timm")       # local timm cache, never downloads
>>> enc = create_encoder(None, "JOB/encoders/simclr")   # a folder from 'wsi-mil pretrain'
"""

from wsi_mil.encoders.factory import DATA_CONFIG_KEYS, Encoder, create_encoder, safe_name
from wsi_mil.encoders.folder import is_encoder_dir, read_encoder_json, save_encoder_dir
from wsi_mil.encoders.registry import ENTRIES, EncoderEntry, list_entries, resolve_arch
from wsi_mil.encoders.weights import load_into, read_state_dict, state_dict_hash

__all__ = [
    "DATA_CONFIG_KEYS",
    "ENTRIES",
    "Encoder",
    "EncoderEntry",
    "create_encoder",
    "is_encoder_dir",
    "list_entries",
    "load_into",
    "read_encoder_json",
    "read_state_dict",
    "resolve_arch",
    "safe_name",
    "save_encoder_dir",
    "state_dict_hash",
]
