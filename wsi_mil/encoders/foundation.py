"""Ready-made pathology foundation encoders: the publishers' recipes, expressed as timm models.

Each entry gives the exact ``timm.create_model`` arguments, the pooling, the input size and the
normalisation its publisher uses, checked against the publisher's model card and loading code
(the Hugging Face model cards, and the loaders of TRIDENT ``trident/patch_encoder_models/load.py``
and STAMP ``src/stamp/preprocessing/extractor/*.py``). ``published_params`` and
``published_dim`` are the publishers' figures; ``licence`` is a short note (read the model card:
it binds, this does not) and ``gated`` says the repository asks you to accept its terms; ``tests/encoders/test_foundation.py`` builds every
entry on the meta device and checks both.

Pooling matters: a wrong pooling gives plausible-looking, wrong features. Virchow, Virchow2 and
H0-mini are read as the class token concatenated with the mean of the patch tokens (register
tokens excluded), as their model cards recommend; Midnight likewise (its card's classification
embedding). CONCH v1.5 is read by its attentional pooler (a learnt query over all the tokens,
then a LayerNorm: :mod:`wsi_mil.encoders.conch`), as TRIDENT's ``CONCHVisionTower`` does.
Every other entry uses the model's class token after the final norm.

Weights are never downloaded: see :mod:`wsi_mil.encoders.sources` (a publisher folder, the
local Hugging Face cache, a weights manifest). This module is light: no torch, no timm.
"""

from __future__ import annotations

from wsi_mil.encoders.entry import HALF, IMAGENET_MEAN, IMAGENET_STD, EncoderEntry, square_config

#: H-optimus-0 / H-optimus-1 / H0-mini normalisation (their model cards)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
#: Lunit DINO normalisation (lunit-io/benchmark-ssl-pathology; 1aurent's timm port)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)

_CC_NC_ND = "CC-BY-NC-ND-4.0 (non-commercial)"
_TRIDENT = "TRIDENT trident/patch_encoder_models/load.py"
_STAMP = "STAMP src/stamp/preprocessing/extractor"

# the kwargs of the ViT-H/14 with SwiGLU that Virchow and Virchow2 share (model cards, TRIDENT)
_VIRCHOW = {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
            "mlp_layer": "swiglu_packed", "act_layer": "silu", "dynamic_img_size": True}
# H-optimus-0 and -1: timm's DINOv2 ViT-g/14 with 4 registers, at 224 px (model cards, TRIDENT, STAMP)
_HOPTIMUS = {"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True}


def _kaiko(name: str, arch: str, size: str, width: int, params: str, **kwargs: object) -> EncoderEntry:
    return EncoderEntry(
        name, arch, f"kaiko.ai {size} (DINO on TCGA, 'Towards large-scale training of pathology foundation "
                    f"models'), class token, {width}-d",
        data_config=square_config(224, HALF, HALF, "bilinear"),
        timm_kwargs={"dynamic_img_size": True, **kwargs},
        hf_repo=f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms",
        published_params=params, published_dim=width,
        licence="kaiko.ai, research use",
        reference=f"hf 1aurent/{arch}.kaiko_ai_towards_large_pathology_fms; {_TRIDENT} (KaikoInferenceEncoder)",
    )


FOUNDATION_ENTRIES: tuple[EncoderEntry, ...] = (
    EncoderEntry(
        "uni", "vit_large_patch16_224",
        "UNI (Mahmood lab): ViT-L/16, DINOv2 on Mass-100K, class token, 1024-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
        hf_repo="MahmoodLab/UNI", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="303M", published_dim=1024, licence=_CC_NC_ND, gated=True,
        reference=f"hf MahmoodLab/UNI model card; {_TRIDENT} (UNIInferenceEncoder); {_STAMP}/uni.py",
    ),
    EncoderEntry(
        "uni2_h", "vit_giant_patch14_224",
        "UNI2-h (Mahmood lab): ViT-H/14, SwiGLU, 8 register tokens, class token, 1536-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                     "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
                     "mlp_layer": "swiglu_packed", "act_layer": "silu", "reg_tokens": 8, "dynamic_img_size": True},
        hf_repo="MahmoodLab/UNI2-h", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="681M", published_dim=1536, licence=_CC_NC_ND, gated=True,
        reference=f"hf MahmoodLab/UNI2-h model card; {_TRIDENT} (UNIv2InferenceEncoder); {_STAMP}/uni2.py",
    ),
    EncoderEntry(
        "virchow", "vit_huge_patch14_224",
        "Virchow (Paige): ViT-H/14, SwiGLU, class token + mean patch token, 2560-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        timm_kwargs=dict(_VIRCHOW), pooling="cls+mean",
        hf_repo="paige-ai/Virchow", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="632M", published_dim=2560,
        licence="Apache-2.0", gated=True,
        reference=f"hf paige-ai/Virchow model card; {_TRIDENT} (VirchowInferenceEncoder)",
    ),
    EncoderEntry(
        "virchow2", "vit_huge_patch14_224",
        "Virchow2 (Paige): ViT-H/14, SwiGLU, 4 register tokens, class token + mean patch token, 2560-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        timm_kwargs={**_VIRCHOW, "reg_tokens": 4}, pooling="cls+mean",
        hf_repo="paige-ai/Virchow2", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="632M", published_dim=2560, licence=_CC_NC_ND, gated=True,
        reference=f"hf paige-ai/Virchow2 model card; {_TRIDENT} (Virchow2InferenceEncoder); {_STAMP}/virchow2.py",
    ),
    EncoderEntry(
        "h_optimus_0", "vit_giant_patch14_reg4_dinov2",
        "H-optimus-0 (Bioptimus): ViT-g/14, 4 register tokens, class token, 1536-d",
        data_config=square_config(224, HOPTIMUS_MEAN, HOPTIMUS_STD, "bilinear"),
        timm_kwargs=dict(_HOPTIMUS),
        hf_repo="bioptimus/H-optimus-0", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="1.1B", published_dim=1536,
        licence="Apache-2.0", gated=True,
        reference=f"hf bioptimus/H-optimus-0 model card; {_TRIDENT} (HOptimus0InferenceEncoder); {_STAMP}/h_optimus_0.py",
    ),
    EncoderEntry(
        "h_optimus_1", "vit_giant_patch14_reg4_dinov2",
        "H-optimus-1 (Bioptimus): ViT-g/14, 4 register tokens, class token, 1536-d",
        data_config=square_config(224, HOPTIMUS_MEAN, HOPTIMUS_STD, "bilinear"),
        timm_kwargs=dict(_HOPTIMUS),
        hf_repo="bioptimus/H-optimus-1", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="1.1B", published_dim=1536,
        licence="Bioptimus, non-commercial", gated=True,
        reference=f"hf bioptimus/H-optimus-1 model card; {_TRIDENT} (HOptimus1InferenceEncoder); {_STAMP}/h_optimus_1.py",
    ),
    EncoderEntry(
        "h0_mini", "vit_base_patch14_reg4_dinov2",
        "H0-mini (Bioptimus, distilled from H-optimus-0): ViT-B/14, SwiGLU, 4 register tokens, "
        "class token + mean patch token, 1536-d",
        data_config=square_config(224, HOPTIMUS_MEAN, HOPTIMUS_STD, "bicubic"),
        # mlp_ratio: the model card passes only mlp_layer/act_layer (the rest is in the repo's
        # config.json); 2.66667 * 2 (as its ViT-g teacher) is the ratio that gives the card's 86M
        # parameters with SwiGLU (timm's default 4 gives 72M). A folder's config.json is checked.
        timm_kwargs={"img_size": 224, "global_pool": "", "mlp_layer": "swiglu_packed", "act_layer": "silu",
                     "mlp_ratio": 2.66667 * 2, "init_values": 1e-5, "dynamic_img_size": True},
        pooling="cls+mean",
        hf_repo="bioptimus/H0-mini", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="86M", published_dim=1536, licence=_CC_NC_ND, gated=True,
        reference=f"hf bioptimus/H0-mini model card (output (1, 261, 768); CLS + mean patch tokens); "
                  f"{_TRIDENT} (H0MiniInferenceEncoder); kaiko-ai/eva backbones/pathology/bioptimus.py",
    ),
    EncoderEntry(
        "gigapath", "vit_giant_patch14_dinov2",
        "Prov-GigaPath tile encoder (Microsoft/Providence): ViT-g with 16 px patches, class token, 1536-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
        timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                     "num_heads": 24, "mlp_ratio": 5.33334, "dynamic_img_size": True},
        hf_repo="prov-gigapath/prov-gigapath", weights_files=("pytorch_model.bin", "model.safetensors"),
        published_params="1.13B", published_dim=1536,
        licence="Apache-2.0, research-use terms", gated=True,
        reference=f"hf prov-gigapath/prov-gigapath model card; {_TRIDENT} (GigaPathInferenceEncoder); {_STAMP}/gigapath.py",
    ),
    EncoderEntry(
        "phikon", "vit_base_patch16_224",
        "Phikon (Owkin): ViT-B/16, iBOT on TCGA, class token, 768-d (Hugging Face transformers weights)",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        timm_kwargs={"img_size": 224, "norm_eps": 1e-12},
        hf_repo="owkin/phikon", weights_format="hf_vit",
        published_params="86M", published_dim=768,
        licence="Owkin, non-commercial",
        reference=f"hf owkin/phikon model card (ViTModel, last_hidden_state[:, 0]); {_TRIDENT} (PhikonInferenceEncoder)",
    ),
    EncoderEntry(
        "phikon_v2", "vit_large_patch16_224",
        "Phikon-v2 (Owkin): ViT-L/16, DINOv2 on PANCAN-XL, class token, 1024-d (Hugging Face transformers weights)",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "norm_eps": 1e-6},
        hf_repo="owkin/phikon-v2", weights_format="hf_dinov2",
        published_params="0.3B", published_dim=1024,
        licence="Owkin, non-commercial",
        reference=f"hf owkin/phikon-v2 model card (Dinov2Model, last_hidden_state[:, 0]); {_TRIDENT} (Phikonv2InferenceEncoder)",
    ),
    EncoderEntry(
        "midnight", "vit_giant_patch14_dinov2",
        "Midnight-12k (kaiko.ai): ViT-g/14 DINOv2, class token + mean patch token, 3072-d "
        "(Hugging Face transformers weights)",
        data_config=square_config(224, HALF, HALF, "bilinear"),
        timm_kwargs={"img_size": 224, "norm_eps": 1e-6},
        pooling="cls+mean",
        hf_repo="kaiko-ai/midnight", weights_format="hf_dinov2",
        published_params="1.1B", published_dim=3072, licence="MIT",
        reference=f"hf kaiko-ai/midnight model card (extract_classification_embedding: CLS + mean patch, 3072); "
                  f"{_TRIDENT} (Midnight12kInferenceEncoder)",
    ),
    _kaiko("kaiko_vits16", "vit_small_patch16_224", "ViT-S/16", 384, "22M"),
    _kaiko("kaiko_vits8", "vit_small_patch8_224", "ViT-S/8", 384, "22M"),
    _kaiko("kaiko_vitb16", "vit_base_patch16_224", "ViT-B/16", 768, "86M"),
    _kaiko("kaiko_vitb8", "vit_base_patch8_224", "ViT-B/8", 768, "86M"),
    # built at 518 px as published (its position embeddings), fed 224 px tiles (TRIDENT's transform)
    _kaiko("kaiko_vitl14", "vit_large_patch14_reg4_dinov2", "ViT-L/14 with 4 registers", 1024, "304M", img_size=518),
    EncoderEntry(
        "ctranspath", "swin_tiny_patch4_window7_224",
        "CTransPath (Wang et al. 2022; CHIEF's weights): Swin-T with a convolutional stem, mean-pooled tokens, 768-d",
        data_config=square_config(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        timm_kwargs={"img_size": 224, "embed_layer": "ctranspath_convstem"},
        hf_repo="MahmoodLab/hest-bench", hf_repo_type="dataset",
        download_files=("fm_v1/ctranspath/CHIEF_CTransPath.pth",),
        weights_format="timm0_swin",
        weights_files=("fm_v1/ctranspath/CHIEF_CTransPath.pth", "CHIEF_CTransPath.pth", "ctranspath.pth"),
        published_params="28M", published_dim=768,
        licence="see the TransPath and CHIEF repositories", gated=True,
        reference=f"github Xiyue-Wang/TransPath ctran.py (timm 0.5.4 swin_tiny + ConvStem); "
                  f"{_TRIDENT} (CTransPathInferenceEncoder)",
    ),
    EncoderEntry(
        "conch_v15", "vit_large_patch16_224",
        "CONCH v1.5 vision tower (Mahmood lab; TITAN's patch encoder): ViT-L/16 at 448 px, layer scale, "
        "attentional pooler over all tokens + LayerNorm, 768-d",
        data_config=square_config(448, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        # built at 448 px: the position embeddings are brought to its 28 x 28 grid once, at load,
        # with the publisher's two resamplings (wsi_mil/encoders/conch.py); other sizes are refused
        timm_kwargs={"img_size": 448, "patch_size": 16, "init_values": 1.0},
        pooling="conch_attn",
        hf_repo="MahmoodLab/conchv1_5", weights_format="conch_v15", weights_files=("pytorch_model_vision.bin",),
        # 306.1M counted from the publisher's CONCHVisionTower (ViT-L/16 at 224 px + the 2.76M pooler);
        # ours holds 588 x 1024 more position-embedding values (a 28 x 28 grid, precomputed): 306.7M
        published_params="306M", published_dim=768, licence=_CC_NC_ND, gated=True,
        reference=f"github mahmoodlab/TRIDENT a91fa84 trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py "
                  f"(CONCHVisionTower, create_model_from_pretrained, img_size 448); {_TRIDENT} "
                  f"(Conchv15InferenceEncoder: pytorch_model_vision.bin, 768-d)",
    ),
    EncoderEntry(
        "lunit_vits8", "vit_small_patch8_224",
        "Lunit DINO ViT-S/8 ('Benchmarking self-supervised learning on diverse pathology datasets'), class token, 384-d",
        data_config=square_config(224, LUNIT_MEAN, LUNIT_STD, "bicubic"),
        timm_kwargs={"img_size": 224, "dynamic_img_size": True},
        hf_repo="1aurent/vit_small_patch8_224.lunit_dino",
        published_params="22M", published_dim=384,
        licence="Lunit, non-commercial",
        reference=f"hf 1aurent/vit_small_patch8_224.lunit_dino; {_TRIDENT} (LunitS8InferenceEncoder)",
    ),
)
