"""The ``train`` config section (YAML ``train:`` mapping or a flat file; CLI options override)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from wsi_mil.config import StrictModel
from wsi_mil.mil.heads import HeadOptions, head_entry, heads_help, parse_head_options

DEFAULT_HEAD = "chowder"


class DomainAdversarialConfig(StrictModel):
    """``train.domain_adversarial``: a site classifier on the head's slide representation, trained
    through a gradient reversal layer (Ganin et al., 2016) jointly with the slide-label loss."""

    column: str = Field("site", min_length=1, description="labels column of the domains (site: hospital, "
                                                          "scanner or batch)")
    weight: float = Field(1.0, gt=0, description="weight W of the class-balanced site cross-entropy in the loss")
    hidden: int = Field(64, ge=1, description="hidden units of the site classifier (one ReLU layer)")


#: fields whose options are words that a boolean stands for: field -> (word for true, word for false)
BOOLEAN_READINGS: dict[str, tuple[str, str]] = {"tune": ("on", "off"), "standardize": ("zscore", "none")}


class TrainConfig(StrictModel):
    """How ``wsi-mil train`` fits and evaluates a MIL head. Epoch = one pass over the training bags."""

    task: Literal["classification", "survival", "regression"] = Field(
        "classification", description="classification (label), survival (time, event: Cox loss) or regression "
                                      "(target: MSE/Huber loss); see docs/train.md")
    regression_loss: Literal["mse", "huber"] = Field(
        "mse", description="regression loss on standardised targets (huber: delta 1 standard deviation)")
    head: str = Field(DEFAULT_HEAD, description=f"MIL head: {heads_help()}")
    head_options: SerializeAsAny[HeadOptions] = Field(
        default_factory=dict, validate_default=True,  # {} -> the head's defaults (the validator below)
        description="options of the head: its registered options model (see docs/train.md)")
    folds: int = Field(5, ge=2, description="cross-validation folds K (cv: kfold)")
    cv: Literal["kfold", "leave_one_site_out"] = Field(
        "kfold", description="kfold: K folds stratified by label, grouped by case; leave_one_site_out: each site "
                             "(labels column 'site') held out in turn, one fold per site")
    domain_adversarial: DomainAdversarialConfig | None = Field(
        None, description="a site classifier on the head's slide representation through gradient reversal "
                          "({column: site, weight: W}); null = off")
    val_fraction: float = Field(0.2, gt=0, le=0.5, description="share of a training fold held out for early stopping")
    max_epochs: int = Field(100, ge=1)
    min_epochs: int = Field(10, ge=1, description="the best epoch is searched from here on (no stop before)")
    patience: int = Field(10, ge=1, description="epochs without improvement before stopping")
    monitor: Literal["loss", "auc"] = Field(
        "loss", description="validation metric for early stopping: the loss, or the task's score (AUC; survival: "
                            "Harrell's c-index; regression: negative MAE)")
    batch_size: int = Field(16, ge=1, description="bags per optimisation step")
    tiles_per_bag: int | None = Field(
        None, ge=1, description="tiles sampled per bag per step; null = whole bags (default: a sample can miss a slide's few lesion tiles)")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate (default from docs/mil-defaults.md)")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay (all parameters)")
    tile_init: Literal["auto", "random", "outliers", "contrast"] = Field(
        "auto", description="start of the linear tile scorer (few lesion tiles among many; binary classification; "
                            "wsi_mil.mil.warmstart): random; contrast, the direction along which the positive bags' "
                            "tiles are more heavy-tailed than the negative bags' (fourth moments); outliers, fitted to "
                            "the tiles that stand out from the negative bags' tiles; auto = contrast for binary "
                            "classification with a linear tile scorer when the median training bag holds >= 200 tiles "
                            "(slides), else random")
    standardize: Literal["auto", "zscore", "maxabs", "none"] = Field(
        "auto", description="feature scaling from the training tiles (wsi_mil.mil.scaling): zscore, each feature's mean "
                            "and std; maxabs, each feature over its largest absolute value, not centred (sparse "
                            "features); auto = maxabs when >= 90 % of the training tiles' values are 0 and the bags "
                            "are not centred, else zscore; none; true / false read as zscore / none")
    class_weighting: Literal["balanced", "none"] = Field("balanced", description="loss weights n / (C * n_c)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_tiles_per_batch: int = Field(1 << 16, ge=1, description="padded tiles per whole-bag inference batch")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals (0 = none)")
    ci_level: float = Field(0.95, gt=0, lt=1)
    classes: list[str] | None = Field(None, description="class order (index 1 = positive for binary)")
    missing_features: Literal["error", "drop"] = Field("error", description="labelled slides without a feature file")
    final_epochs: int | None = Field(None, ge=1, description="epochs of the final model; null = median best epoch of the folds")
    tune: Literal["on", "off"] = Field(
        "on", description="choose the head's settings by nested cross-validation (Optuna); off = the settings as given")
    tune_trials: int = Field(16, ge=1, description="settings tried per search (one search per outer fold + one for the final model)")
    tune_timeout_s: float | None = Field(
        None, gt=0, description="cap in seconds per search (stops after the running trial; not deterministic); null = none")
    tune_folds: int = Field(3, ge=2, description="inner cross-validation folds of a search")
    tune_final: Literal["ensemble", "refit"] = Field(
        "ensemble", description="final model of a tuned run: the mean of the outer-fold models, or a refit on all "
                                "training slides with the settings of one more search over them")

    @property
    def cv_name(self) -> str:
        """How the folds are made, for messages: ``leave-one-site-out`` or ``5-fold``."""
        return "leave-one-site-out" if self.cv == "leave_one_site_out" else f"{self.folds}-fold"

    @model_validator(mode="after")
    def _tile_init_task(self) -> TrainConfig:
        if self.tile_init in ("outliers", "contrast") and self.task != "classification":
            raise ValueError(f"tile_init: {self.tile_init} is for binary classification, not task {self.task}; "
                             "use tile_init: random")
        return self

    @field_validator(*BOOLEAN_READINGS, mode="before")
    @classmethod
    def _booleans_as_words(cls, value: Any, info: ValidationInfo) -> Any:
        """A boolean where a word is expected, read as :data:`BOOLEAN_READINGS` says: YAML 1.1 reads a bare
        ``on``/``off`` (``tune: off``, ``--set tune=off``) as one, and earlier configs wrote ``standardize: true``."""
        if isinstance(value, bool) and info.field_name is not None:
            yes, no = BOOLEAN_READINGS[info.field_name]
            return yes if value else no
        return value

    @field_validator("head_options", mode="before")
    @classmethod
    def _typed_head_options(cls, value: Any, info: ValidationInfo) -> Any:
        """The ``head_options`` mapping -> the options model of ``head``: the one validation."""
        head = info.data.get("head")
        if not isinstance(head, str):  # ``head`` failed its own validation, which is reported
            return HeadOptions()
        return parse_head_options(head, value)

    @model_validator(mode="after")
    def _options_match_head(self) -> TrainConfig:
        """After an assignment to ``head``: the options are re-read as the new head's."""
        if not isinstance(self.head_options, head_entry(self.head).options):
            object.__setattr__(self, "head_options", parse_head_options(self.head, self.head_options.model_dump()))
        return self
