"""Model selection inside ``train``: an Optuna search over a head's declared space, by an inner
cross-validation of one pool of training slides.

``run_train`` (``tune: on``) runs one search per outer fold, over that fold's training slides
only, and one over all training slides for the final model. A search splits its ``pool`` into
``tune_folds`` inner folds (stratified, grouped by case: :func:`~wsi_mil.mil.splits.assign_folds`);
each trial fits the head on every inner training part (early stopping on a grouped validation
part of it, as the outer folds do) and scores the inner held-out fold. The trial's value is the
AUC of its pooled inner out-of-fold predictions (balanced accuracy where AUC is undefined);
survival: Harrell's c-index; regression: minus the MAE (inner folds stratified on the event, or
the target's quartile).
The first trial is always the settings as given (the defaults): the search replaces them only
with settings that score higher on the same inner folds by more than the noise of the best of
all the searched trials (:func:`_selection_margin`, a bootstrap of the maximum paired difference,
White's reality check: the best of many noisy inner scores is biased upwards, the more so the
more trials, and the defaults must not lose to that bias);
the running mean of the fold AUCs is reported after each inner fold, so Optuna's
:class:`~optuna.pruners.MedianPruner` stops poor trials early. Sampling is
:class:`~optuna.samplers.TPESampler` seeded from the run's seed: a given seed, data and device
give the same trials and the same choice (``tune_timeout_s`` can end a search earlier, which
is not deterministic; ``tune_trials`` is).

Keys set explicitly in the config (``lr`` in a YAML file, ``head_options.r`` with ``--set``)
are kept as given and left out of the search. The bags stay in one :class:`BagSet` for every
trial, and each inner fold's standardisation statistics are computed once per search; its feature
components, prepared bags and outlier start once per search too, by the first trial
(:mod:`wsi_mil.mil.fitcache`, within :func:`search_cache_bytes`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna

from wsi_mil.config import config_to_dict
from wsi_mil.mil.bags import DENSE_BYTES, BagSet
from wsi_mil.mil.config import TrainConfig
from wsi_mil.mil.fitcache import CacheBudget, FitCache
from wsi_mil.mil.heads import Choice, FloatRange, IntRange, SearchSpace, head_entry
from wsi_mil.mil.metrics import classification_metrics
from wsi_mil.mil.scaling import FeatureStats
from wsi_mil.mil.splits import assign_folds, validation_split
from wsi_mil.mil.survival import harrell_c
from wsi_mil.mil.targets import PRIMARY, SURVIVAL, task_metrics, task_score
from wsi_mil.mil.training import Log, build_head, fit, predict_probs, quiet

HEAD_PREFIX = "head_options."


def search_space(cfg: TrainConfig) -> tuple[SearchSpace, list[str]]:
    """The head's declared space minus the keys the config sets explicitly: (space, fixed keys)."""
    declared = head_entry(cfg.head).options.search_space
    set_options = cfg.head_options.model_fields_set
    space: SearchSpace = {}
    fixed: list[str] = []
    for key, dist in declared.items():
        given = (key[len(HEAD_PREFIX):] in set_options) if key.startswith(HEAD_PREFIX) else key in cfg.model_fields_set
        if given:
            fixed.append(key)
        else:
            space[key] = dist
    return space, fixed


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """One point of ``space``: config key -> value, drawn by ``trial``."""
    out: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, FloatRange):
            out[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntRange):
            out[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, Choice):
            out[key] = trial.suggest_categorical(key, list(dist.choices))
        else:
            raise TypeError(f"search space of '{key}': unknown range {dist!r}")
    return out


def apply_settings(cfg: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    """``cfg`` with ``settings`` (``lr``, ``head_options.r``, ...) applied, validated, tuning off."""
    data = config_to_dict(cfg)
    options = dict(data["head_options"])
    for key, value in settings.items():
        if key.startswith(HEAD_PREFIX):
            options[key[len(HEAD_PREFIX):]] = value
        else:
            data[key] = value
    data["head_options"] = options
    data["tune"] = "off"
    return TrainConfig.model_validate(data)


def inner_score(y: npt.NDArray[Any], probs: npt.NDArray[np.float64], names: list[str],
                task: str = "classification") -> float:
    """What a search maximises: AUC, else balanced accuracy (one class only), else 0; survival: the
    c-index (0 where undefined); regression: -MAE."""
    if task == SURVIVAL:  # Harrell's c only: the search and its selection margin score thousands of resamples
        c = harrell_c(y[:, 0], y[:, 1], np.asarray(probs, dtype=np.float64).reshape(-1))
        return float(c) if c is not None else 0.0
    if task != "classification":
        v = task_score(task, task_metrics(task, y, probs))
        return float(v) if v is not None else (0.0 if PRIMARY[task] == "c_index" else -1e300)
    m = classification_metrics(y, probs, names)
    for key in ("auc", "balanced_accuracy"):
        if m[key] is not None:
            return float(m[key])  # type: ignore[arg-type]
    return 0.0


@dataclass
class SearchResult:
    """The outcome of one search over ``pool``: the chosen config (``tune`` off) and its record."""

    cfg: TrainConfig
    chosen: dict[str, Any]
    inner_score: float | None
    best_epochs: list[int]
    searched: list[str]
    fixed: list[str]
    n_trials: int = 0
    n_pruned: int = 0
    inner_folds: int = 0
    seconds: float = 0.0
    note: str = ""
    trials: list[dict[str, Any]] = field(default_factory=list)
    kept_given: bool = False
    inner_metric: str = "auc"
    margin: float = 0.0

    def record(self) -> dict[str, Any]:
        """The JSON record of metrics.json (settings chosen, inner score, budget used)."""
        return {"chosen": self.chosen, "inner_score": self.inner_score, "inner_metric": self.inner_metric,
                "inner_folds": self.inner_folds, "best_epochs": self.best_epochs, "trials": self.n_trials,
                "pruned": self.n_pruned, "seconds": round(self.seconds, 2), "searched": self.searched,
                "fixed": self.fixed, "kept_given": self.kept_given,
                "margin": round(self.margin, 4), **({"note": self.note} if self.note else {})}


@dataclass
class _InnerFold:
    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    held: npt.NDArray[np.int64]
    stats: FeatureStats | None
    #: the feature components, prepared bags and outlier start of ``train``: computed by the first trial, reused
    cache: FitCache = field(default_factory=FitCache)


def search_cache_bytes(bagset: BagSet) -> int:
    """Bytes of prepared bags one search keeps over all its inner folds (:mod:`wsi_mil.mil.fitcache`): half
    the bags' own memory, or :data:`~wsi_mil.mil.bags.DENSE_BYTES` on small cohorts. On 1,024-d float16
    slides with 128 feature components, three inner folds keep about 0.4 of it."""
    return max(DENSE_BYTES, bagset.nbytes // 2)


def _inner_folds(
    bagset: BagSet, targets: npt.NDArray[np.int64], groups: npt.NDArray[np.str_], pool: npt.NDArray[np.int64],
    cfg: TrainConfig, seed: int,
) -> list[_InnerFold]:
    """The inner folds of ``pool`` (positions into the bags), at most ``tune_folds`` and at most
    the smallest class's number of cases; empty when fewer than 2 are possible. ``targets``: the
    strata (classes; survival: the event; regression: target quartiles)."""
    cases = [len(set(groups[pool][targets[pool] == c].tolist())) for c in np.unique(targets[pool])]
    k = min(cfg.tune_folds, min(cases)) if len(cases) > 1 else 0
    if k < 2:
        return []
    fold_of = assign_folds(targets[pool], groups[pool], k, seed)
    budget = CacheBudget(search_cache_bytes(bagset))
    out = []
    for j in range(k):
        held, rest = pool[fold_of == j], pool[fold_of != j]
        tr, va = validation_split(rest, targets, groups, cfg.val_fraction, seed + j)
        stats = bagset.feature_stats(tr.tolist(), cfg.head_options.bag_centring) if cfg.standardize != "none" else None
        out.append(_InnerFold(tr, va, held, stats, FitCache(budget)))
    return out


def search_settings(
    bagset: BagSet, targets: npt.NDArray[np.int64], groups: npt.NDArray[np.str_], pool: npt.NDArray[np.int64],
    cfg: TrainConfig, class_names: list[str], seed: int, log: Log = quiet,
    strata: npt.NDArray[np.int64] | None = None, domains: npt.NDArray[np.int64] | None = None,
) -> SearchResult:
    """Choose the settings of ``cfg.head`` by an inner CV of the slides at positions ``pool`` only.

    ``targets`` (n_bags,) int class per bag (survival, regression: the task's targets, see
    :func:`wsi_mil.mil.targets.task_arrays`, with ``strata`` (n_bags,) int for the folds),
    ``groups`` (n_bags,) case ids; nothing outside ``pool`` is read. Runs ``cfg.tune_trials`` trials (or until ``cfg.tune_timeout_s``): the first
    is the settings as given (the defaults), kept unless the best searched trial scores higher by more
    than the noise of the best of all searched trials (:func:`_selection_margin`). ``domains``: the site index per bag of
    domain-adversarial training (``cfg.domain_adversarial``), passed to every fit.
    """
    t0 = time.perf_counter()
    task = cfg.task
    strata = targets if strata is None else strata
    metric = "auc" if task == "classification" else PRIMARY[task] if task == "survival" else "neg_mae"
    shown = {"auc": "AUC", "c_index": "c-index", "neg_mae": "-MAE"}[metric]
    space, fixed = search_space(cfg)
    base = apply_settings(cfg, {})
    if not space:
        return SearchResult(base, {}, None, [], [], fixed, note="nothing to search: every key is set in the config",
                            inner_metric=metric)
    folds = _inner_folds(bagset, strata, groups, pool, cfg, seed)
    if not folds:
        return SearchResult(base, {}, None, [], list(space), fixed,
                            note="too few cases per class for an inner cross-validation: settings as given",
                            inner_metric=metric)
    in_dim, n_classes = bagset.dim, len(class_names)
    where = {int(p): i for i, p in enumerate(pool)}

    def evaluate(
        settings: dict[str, Any], trial: optuna.Trial | None
    ) -> tuple[float, list[int], list[float], npt.NDArray[np.float64]]:
        """Inner-CV score of ``settings`` (pooled out-of-fold AUC), best epochs, running fold means and
        the pooled predictions; reports each running mean to ``trial``, stops when Optuna prunes it."""
        trial_cfg = apply_settings(cfg, settings)
        probs = np.full((len(pool), n_classes), np.nan)  # one-output tasks: (len(pool), 1) risks / values
        scores, best, running = [], [], []
        for j, part in enumerate(folds):
            head = build_head(trial_cfg, in_dim, n_classes, seed + 1000 * (j + 1))
            res = fit(head, bagset, targets, part.train, part.val, trial_cfg, seed + j,
                      class_names=class_names, stats=part.stats, domains=domains, cache=part.cache)
            p = predict_probs(head, bagset, part.held.tolist(), trial_cfg.eval_tiles_per_batch)
            probs[[where[int(i)] for i in part.held]] = p
            scores.append(inner_score(targets[part.held], p, class_names, task))
            best.append(res.best_epoch)
            running.append(float(np.mean(scores)))
            if trial is not None:
                trial.report(running[-1], j)
                if j < len(folds) - 1 and trial.should_prune():
                    raise optuna.TrialPruned()
        return inner_score(targets[pool], probs, class_names, task), best, running, probs

    def objective(trial: optuna.Trial) -> float:
        value, best, _, probs = evaluate(suggest(trial, space), trial)
        pooled[trial.number] = probs
        trial.set_user_attr("best_epochs", best)
        return value

    # The settings as given (the defaults) are always the first candidate: a search can only replace
    # them with settings that score higher on the same inner folds.
    given = {key: _current_value(cfg, key) for key in space}
    pooled: dict[int, npt.NDArray[np.float64]] = {}
    given_value, given_best, given_running, given_probs = evaluate({}, None)
    n = cfg.tune_trials
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the run's log reports each search
    try:
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, n // 3))),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=max(2, n // 4), n_warmup_steps=0),
        )
        distributions = {key: _distribution(dist) for key, dist in space.items()}
        added = all(_contains(distributions[k], v) for k, v in given.items())
        if added:  # the sampler and the pruner learn from the given settings too
            study.add_trial(optuna.trial.create_trial(
                params=given, distributions=distributions, value=given_value,
                intermediate_values=dict(enumerate(given_running)), user_attrs={"best_epochs": given_best}))
        if n > 1:
            study.optimize(objective, n_trials=n - 1, timeout=cfg.tune_timeout_s)
    finally:
        optuna.logging.set_verbosity(verbosity)
    tried = study.trials[1:] if added else study.trials
    searched = [t for t in tried if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in tried)
    n_run = 1 + len(tried)
    trials = [{"number": 0, "state": "complete", "value": given_value, "params": given, "given": True}]
    trials += [{"number": i + 1, "state": t.state.name.lower(), "value": t.value, "params": t.params}
               for i, t in enumerate(tried)]
    top = max(searched, key=lambda t: t.value if t.value is not None else -np.inf, default=None)
    margin = 0.0 if top is None or top.value is None or top.value <= given_value else _selection_margin(
        targets[pool], [pooled[t.number] for t in searched], given_probs, class_names, task, seed)
    gain = None if top is None or top.value is None else float(top.value) - given_value
    if top is None or gain is None or gain <= margin:
        note = "the settings as given scored best" if not gain or gain <= 0 else (
            f"the best of {len(searched)} searched trials scored {gain:.4f} higher, within the noise of the best "
            f"of that many ({margin:.4f}): kept the settings as given")
        result = SearchResult(base, given, given_value, given_best, list(space), fixed, n_run, pruned, len(folds),
                              time.perf_counter() - t0, note=note, trials=trials, kept_given=True,
                              inner_metric=metric, margin=margin)
        log(f"  search: {n_run} trials ({pruned} pruned) on {len(pool)} slides, {len(folds)} inner folds, "
            f"{result.seconds:.1f} s; inner {shown} {given_value:.3f}: kept the settings as given")
        return result
    chosen = {k: top.params[k] for k in space}
    result = SearchResult(
        apply_settings(cfg, chosen), chosen, given_value + gain, list(top.user_attrs.get("best_epochs", [])),
        list(space), fixed, n_run, pruned, len(folds), time.perf_counter() - t0, trials=trials, inner_metric=metric,
        margin=margin)
    log(f"  search: {result.n_trials} trials ({pruned} pruned) on {len(pool)} slides, {len(folds)} inner folds, "
        f"{result.seconds:.1f} s; inner {shown} {result.inner_score:.3f} with {_settings(chosen)} "
        f"(as given: {given_value:.3f})")
    return result


#: bootstrap resamples of the inner slides behind the selection margin
MARGIN_RESAMPLES = 400
#: the one-sided level of the selection margin: the normal's one-standard-error quantile, so that with a
#: single searched trial the margin is one standard error of its paired difference with the defaults
MARGIN_QUANTILE = 0.8413


def _selection_margin(
    y: npt.NDArray[Any], searched: list[npt.NDArray[np.float64]], given: npt.NDArray[np.float64], names: list[str],
    task: str, seed: int,
) -> float:
    """How much the best of the ``searched`` trials (each (n_slides, n_outputs) pooled inner predictions) must
    beat the settings as given (``given``, the same shape) before it replaces them.

    The slides are resampled together (a paired bootstrap, seeded); in each resample every trial's
    difference with the defaults is centred on its observed value, and the largest centred difference is
    the noise the best-looking trial would show if none were better (White's reality check, single step).
    Returns its :data:`MARGIN_QUANTILE` quantile: with one searched trial, about one standard error of the
    paired difference; with many, more, as the best of many noisy inner scores is biased upwards more."""
    if not searched:
        return 0.0
    rng = np.random.default_rng(seed + 7919)
    observed = np.array([inner_score(y, p, names, task) for p in searched]) - inner_score(y, given, names, task)
    noise = np.empty(MARGIN_RESAMPLES)
    for b in range(MARGIN_RESAMPLES):
        idx = rng.integers(0, len(y), len(y))
        base = inner_score(y[idx], given[idx], names, task)
        diffs = np.array([inner_score(y[idx], p[idx], names, task) for p in searched]) - base
        noise[b] = float(np.max(diffs - observed))
    return float(np.quantile(noise, MARGIN_QUANTILE))


def _current_value(cfg: TrainConfig, key: str) -> Any:
    """The value ``cfg`` holds for a search-space key (``lr``, ``head_options.r``, ...)."""
    if key.startswith(HEAD_PREFIX):
        return getattr(cfg.head_options, key[len(HEAD_PREFIX):])
    return getattr(cfg, key)


def _contains(dist: optuna.distributions.BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (an ``l2`` of 0 is not one of a log range)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except ValueError:
        return False


def _distribution(dist: FloatRange | IntRange | Choice) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution :func:`suggest` draws ``dist`` from."""
    if isinstance(dist, FloatRange):
        return optuna.distributions.FloatDistribution(dist.low, dist.high, log=dist.log)
    if isinstance(dist, IntRange):
        return optuna.distributions.IntDistribution(dist.low, dist.high, log=dist.log)
    return optuna.distributions.CategoricalDistribution(list(dist.choices))


def _settings(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix(HEAD_PREFIX)}={v:.3g}" if isinstance(v, float) else f"{k.removeprefix(HEAD_PREFIX)}={v}"
                     for k, v in chosen.items())
