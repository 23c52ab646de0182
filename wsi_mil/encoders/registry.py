"""Ready-made encoder entries and architecture name resolution.

An *entry* is a named recipe over a timm architecture: which timm model to build, an optional
truncation (e.g. ResNet-50 cut after ``layer3`` as CLAM uses), the pretrained tag used when the
weights are ``timm`` (local cache only), and the data config (input size, mean, std,
interpolation) tiles are normalised with. Any other timm architecture name works too: its data
config then comes from timm's pretrained config for that architecture.
"""

from __future__ import annotations

import difflib

from wsi_mil.encoders.entry import HALF, IMAGENET_MEAN, IMAGENET_STD, EncoderEntry, square_config
from wsi_mil.encoders.foundation import FOUNDATION_ENTRIES
from wsi_mil.errors import EncoderError

__all__ = ["ENTRIES", "EncoderEntry", "list_entries", "resolve_arch"]

ENTRIES: dict[str, EncoderEntry] = {
    e.name: e
    for e in (
        EncoderEntry(
            "resnet50_trunc",
            "resnet50",
            "ImageNet ResNet-50 truncated after layer3 + global average pool, 1024-d (CLAM style)",
            timm_tag="tv_in1k",
            truncate_after="layer3",
            data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ),
        EncoderEntry(
            "resnet50_in1k",
            "resnet50",
            "ImageNet ResNet-50 (torchvision weights), 2048-d",
            timm_tag="tv_in1k",
            data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        ),
        EncoderEntry(
            "vit_s16_in21k",
            "vit_small_patch16_224",
            "ViT-S/16, ImageNet-21k pretrained and 1k fine-tuned (AugReg), 384-d",
            timm_tag="augreg_in21k_ft_in1k",
            data_config=square_config(224, HALF, HALF, "bicubic"),
        ),
        EncoderEntry(
            "vit_b16_in21k",
            "vit_base_patch16_224",
            "ViT-B/16, ImageNet-21k pretrained and 1k fine-tuned (AugReg), 768-d",
            timm_tag="augreg2_in21k_ft_in1k",
            data_config=square_config(224, HALF, HALF, "bicubic"),
        ),
    )
}
ENTRIES.update({e.name: e for e in FOUNDATION_ENTRIES})


def list_entries() -> list[EncoderEntry]:
    """The ready-made entries, in registry order."""
    return list(ENTRIES.values())


def resolve_arch(arch: str) -> EncoderEntry:
    """An entry for ``arch``: a ready-made entry, or a plain timm architecture (``name[.tag]``).

    Raises :class:`EncoderError` for an unknown name, suggesting close matches.
    """
    import timm

    arch = arch.strip()
    if arch in ENTRIES:
        return ENTRIES[arch]
    base, _, tag = arch.partition(".")
    if timm.is_model(base):
        return EncoderEntry(arch, base, f"timm architecture {base}", timm_tag=tag or None)
    names = list(ENTRIES) + timm.list_models()
    close = difflib.get_close_matches(arch, names, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for timm names"
    raise EncoderError(
        f"unknown encoder architecture '{arch}': not a ready-made entry ({', '.join(ENTRIES)}) "
        f"nor a timm architecture; {hint}"
    )
