"""Labels CSV: ``slide_id,label[,case_id][,split][,site]`` read, validated and matched to feature files.

Rules (every problem names the file, the rows and the fix):
- ``slide_id`` and ``label`` columns are required; ``case_id`` (patient), ``split``
  (``train``/``val``/``test``) and ``site`` (hospital, scanner or batch: :mod:`wsi_mil.mil.sites`)
  are optional; when the ``site`` column is there, every row needs a site. Empty slide ids or labels, duplicate slide ids, an
  unknown split value, a case with slides in both the test and the training split, a label
  outside ``classes`` (when given), one number written two ways (``1`` beside ``1.0``) or fewer
  than two classes are errors; each label error lists the classes found, with their counts.
- Labels may be 0/1 (any integers: ordered numerically) or class names (ordered alphabetically,
  or as given by ``classes``). Class index i is ``class_names[i]``; for binary problems class 1
  is the positive one.
- ``val`` rows are used as training rows: the early-stopping validation part is drawn inside
  each training fold. This is reported as a warning, not silently.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, TypeVar

from wsi_mil.errors import LabelsError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelRow:
    """One slide of the labels CSV; ``line`` is its 1-based line number in the file."""

    slide_id: str
    label: str
    case_id: str
    split: str
    line: int
    site: str = ""


@dataclass
class LabelTable:
    """A validated labels CSV. ``targets[i]`` is the class index of ``rows[i]``."""

    path: Path
    rows: list[LabelRow]
    class_names: list[str]
    has_case_id: bool
    warnings: list[str] = field(default_factory=list)
    has_site: bool = False

    @property
    def targets(self) -> list[int]:
        index = {c: i for i, c in enumerate(self.class_names)}
        return [index[r.label] for r in self.rows]

    def subset(self, slide_ids: set[str]) -> LabelTable:
        """The rows whose slide id is in ``slide_ids`` (same classes, same warnings)."""
        rows = [r for r in self.rows if r.slide_id in slide_ids]
        return LabelTable(self.path, rows, self.class_names, self.has_case_id, list(self.warnings), self.has_site)


def _lines(items: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def check_rows(path: Path, raw: list[tuple[dict[str, str], int]], columns: tuple[str, ...]) -> None:
    """Refuse rows of a labels CSV (records and their line numbers) with an empty cell in one of ``columns``,
    or a ``slide_id`` given twice: one :class:`LabelsError` naming the file and the lines."""
    for col in columns:
        empty = [line for rec, line in raw if not rec.get(col)]
        if empty:
            raise LabelsError(f"{path}: empty '{col}' on line(s) {_lines(empty)}; fill it in or remove the row")
    by_id: dict[str, list[int]] = defaultdict(list)
    for rec, line in raw:
        by_id[rec["slide_id"]].append(line)
    dups = {s: ls for s, ls in by_id.items() if len(ls) > 1}
    if dups:
        shown = "; ".join(f"'{s}' on lines {_lines(ls)}" for s, ls in list(dups.items())[:3])
        raise LabelsError(f"{path}: duplicate slide_id(s): {shown}; keep one row per slide")


def _order_classes(labels: list[str]) -> list[str]:
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=lambda s: int(s))
    except ValueError:
        return unique


def read_label_csv(path: str | Path) -> tuple[list[str], list[tuple[dict[str, str], int]]]:
    """A labels CSV as its header and ``(row, line number)`` pairs, names and cells stripped
    (a BOM is tolerated); raises :class:`LabelsError` when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: labels CSV not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = []
            for i, rec in enumerate(reader):
                extra = rec.get(None)  # type: ignore[call-overload]
                if extra and any(str(v).strip() for v in extra):
                    raise LabelsError(f"{path}: line {reader.line_num} has more cells than the header "
                                      f"({', '.join(header)}); quote cells that hold commas or fix the row")
                rows.append(({(k or "").strip(): (v or "").strip() for k, v in rec.items() if k is not None}, i + 2))
    except UnicodeDecodeError as exc:
        raise LabelsError(f"{path}: not UTF-8 text (byte {exc.start}); save the labels CSV as UTF-8") from exc
    except csv.Error as exc:
        raise LabelsError(f"{path}: not a readable CSV ({exc}); save it as plain comma-separated text") from exc
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read the labels CSV ({exc.strerror or exc})") from exc
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise LabelsError(f"{path}: column(s) {', '.join(repr(h) for h in dup)} appear more than once in the header; "
                          "keep one of each")
    return header, rows


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return None if value != value else value  # NaN is not a number label


def describe_classes(labels: list[str], order: list[str] | None = None) -> str:
    """``"classes found: '0' (12 slides), '1' (10), '2' (1)"`` for these labels (in ``order`` if given)."""
    counts = Counter(labels)
    if order is None:
        names = _order_classes(labels)
    else:
        names = [c for c in order if counts[c]] + sorted(c for c in counts if c not in order)
    parts = [f"'{c}' ({counts[c]}{' slides' if i == 0 else ''})" for i, c in enumerate(names)]
    return "classes found: " + ", ".join(parts)


def _check_numbers(path: Path, rows: list[LabelRow]) -> None:
    """Refuse one number written two ways (``1`` and ``1.0``): two classes the user did not mean."""
    by_value: dict[float, set[str]] = defaultdict(set)
    for r in rows:
        v = _number(r.label)
        if v is not None:
            by_value[v].add(r.label)
    for spellings in by_value.values():
        if len(spellings) > 1:
            names = sorted(spellings)
            lines = [r.line for r in rows if r.label in names[1:]]
            raise LabelsError(f"{path}: labels {' and '.join(repr(n) for n in names)} are one number written in "
                              f"{len(names)} ways (line(s) {_lines(lines)}); write each class one way; "
                              f"{describe_classes([r.label for r in rows])}")


def read_labels(path: str | Path, classes: list[str] | None = None) -> LabelTable:
    """Read and validate a labels CSV (see the module docstring); raises :class:`LabelsError`."""
    path = Path(path)
    header, raw = read_label_csv(path)
    missing = [c for c in ("slide_id", "label") if c not in header]
    if missing:
        raise LabelsError(f"{path}: missing column(s) {', '.join(missing)}; the header must be "
                          "slide_id,label[,case_id][,split][,site]")
    has_case = "case_id" in header
    has_split = "split" in header
    has_site = "site" in header
    if not raw:
        raise LabelsError(f"{path}: no rows; add one line per slide (slide_id,label)")
    check_rows(path, raw, ("slide_id", "label") + (("case_id",) if has_case else ()) + (("site",) if has_site else ()))
    rows = []
    for rec, line in raw:
        split = rec.get("split", "").lower() if has_split else ""
        split = split or "train"
        if split not in SPLITS:
            raise LabelsError(f"{path}: line {line}: split '{rec.get('split')}' is not one of {', '.join(SPLITS)}")
        case = rec["case_id"] if has_case else rec["slide_id"]
        rows.append(LabelRow(rec["slide_id"], rec["label"], case, split, line, rec["site"] if has_site else ""))
    warnings: list[str] = []
    n_val = sum(r.split == "val" for r in rows)
    if n_val:
        warnings.append(f"{path}: {n_val} slide(s) with split=val are used for training; the early-stopping "
                        "validation part is drawn inside each training fold")
    splits_of_case: dict[str, set[bool]] = defaultdict(set)
    for r in rows:
        splits_of_case[r.case_id].add(r.split == "test")
    mixed = sorted(c for c, s in splits_of_case.items() if len(s) > 1)
    if mixed:
        raise LabelsError(f"{path}: case(s) {', '.join(mixed[:5])} have slides in both the test split and "
                          "training; put all slides of a case in the same split")
    labels = [r.label for r in rows]
    if classes is not None:
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            lines = [r.line for r in rows if r.label in unknown]
            raise LabelsError(f"{path}: label(s) {', '.join(unknown)} (line(s) {_lines(lines)}) are not in the "
                              f"configured classes {', '.join(classes)}; {describe_classes(labels, list(classes))}")
        class_names = list(classes)
    else:
        _check_numbers(path, rows)
        class_names = _order_classes(labels)
    if len(class_names) < 2:
        raise LabelsError(f"{path}: only one class ({class_names[0]!r}); a classifier needs at least two; "
                          f"{describe_classes(labels)}")
    table = LabelTable(path, rows, class_names, has_case, warnings, has_site)
    if has_site:
        note = prevalence_warning(table)
        if note:
            table.warnings.append(note)
    return table


#: a class's share must differ by at least this many percentage points between two sites ...
CONFOUNDER_POINTS = 20.0
#: ... and site and class must be dependent by a chi-square test at this level, for the warning
CONFOUNDER_P = 0.05
#: sites with fewer slides are not compared (their shares are too noisy to read)
MIN_SITE_SLIDES = 5
#: the one-line advice of every confounder warning
ADVICE = "a model can learn the site instead of the disease; consider cv: leave_one_site_out / domain_adversarial"


def prevalence_warning(table: LabelTable) -> str | None:
    """The confounder warning of a classification labels table with sites, or None (the rule:
    :mod:`wsi_mil.mil.sites`). Binary labels report the positive class (class 1); multi-class labels
    the class whose share differs most."""
    from scipy.stats import chi2_contingency  # only for labels with sites

    if not table.has_site:
        return None
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in table.rows:
        counts[r.site][r.label] += 1
    sites = sorted(s for s in counts if sum(counts[s].values()) >= MIN_SITE_SLIDES)
    if len(sites) < 2:
        return None
    classes = table.class_names[1:] if len(table.class_names) == 2 else table.class_names
    n = {s: sum(counts[s].values()) for s in sites}
    spreads = []  # (points, class, site of the highest share, of the lowest)
    for c in classes:
        share = {s: 100.0 * counts[s][c] / n[s] for s in sites}
        hi, lo = max(sites, key=lambda s: share[s]), min(sites, key=lambda s: share[s])
        spreads.append((share[hi] - share[lo], c, hi, lo))
    points, c, hi, lo = max(spreads, key=lambda t: t[0])
    if points < CONFOUNDER_POINTS:
        return None
    present = [k for k in table.class_names if any(counts[s][k] for s in sites)]
    if len(present) < 2:
        return None
    p = float(chi2_contingency([[counts[s][k] for k in present] for s in sites], correction=False).pvalue)
    if p >= CONFOUNDER_P:
        return None
    what = "positive share" if len(table.class_names) == 2 else "share"
    shares = ", ".join(f"{s} {100.0 * counts[s][c] / n[s]:.0f} %" for s in sites)
    return (f"{table.path}: {what} of class '{c}' differs between sites ({shares}: {points:.0f} points between "
            f"{hi} and {lo}; chi-square p = {p:.2g}); {ADVICE}")


def check_class_counts(table: LabelTable, folds: int, folds_option: str = "--folds") -> None:
    """Refuse ``folds``-fold cross-validation when some class has fewer training cases than folds.

    ``folds_option`` names the setting in the advice, as the command in use spells it (``--folds``
    for ``train``, ``train.folds`` for a study). The message lists every class found, with counts.
    """
    train = [r for r in table.rows if r.split != "test"]
    cases: dict[str, set[str]] = defaultdict(set)
    for r in train:
        cases[r.label].add(r.case_id)
    found = describe_classes([r.label for r in train], table.class_names)
    for name in table.class_names:
        n_cases = len(cases[name])
        if n_cases == 0 or n_cases >= folds:  # a class with no training slide is reported by training itself
            continue
        n_slides = sum(r.label == name for r in train)
        if n_cases >= 2:
            fix = f"set {folds_option} to at most {n_cases}, or add slides"
        else:
            fix = (f"add slides of class '{name}' (at least 2 cases) or remove its row(s), if it is a stray label "
                   "value")
        raise LabelsError(f"{table.path}: class '{name}' has {n_slides} training slide(s) from {n_cases} case(s), "
                          f"fewer than the {folds} cross-validation folds; {fix}; {found}")


class _SlideRow(Protocol):
    @property
    def slide_id(self) -> str: ...


class _Table(Protocol):
    """What :func:`match_rows` needs of a labels table (:class:`LabelTable` or a ``TargetTable``)."""

    path: Path
    warnings: list[str]

    @property
    def rows(self) -> Sequence[_SlideRow]: ...

    def subset(self, slide_ids: set[str]) -> Self: ...


TableT = TypeVar("TableT", bound=_Table)


def match_rows(table: TableT, files: dict[str, Path], missing: str = "error") -> tuple[TableT, list[str]]:
    """The rows of ``table`` that have a feature file, and the warnings of both kinds of mismatch
    (see :func:`match_feature_files`); the matched table carries the warnings too."""
    labelled = {r.slide_id for r in table.rows}
    no_file = [r for r in table.rows if r.slide_id not in files]
    warnings = list(table.warnings)
    if no_file:
        ids = ", ".join(r.slide_id for r in no_file[:5]) + (f" (and {len(no_file) - 5} more)" if len(no_file) > 5 else "")
        msg = f"{table.path}: {len(no_file)} labelled slide(s) have no feature file: {ids}"
        if missing != "drop":
            raise LabelsError(msg + "; run extract for them, remove the rows, or set missing_features: drop")
        warnings.append(msg + "; dropped (missing_features: drop)")
    unlabelled = sorted(set(files) - labelled)
    if unlabelled:
        shown = ", ".join(unlabelled[:5]) + (f" (and {len(unlabelled) - 5} more)" if len(unlabelled) > 5 else "")
        warnings.append(f"{len(unlabelled)} feature file(s) have no row in {table.path} and are not used: {shown}")
    matched = table.subset(set(files) & labelled)
    matched.warnings = warnings
    return matched, warnings


def match_feature_files(
    table: LabelTable, files: dict[str, Path], missing: str = "error"
) -> tuple[LabelTable, list[str]]:
    """Keep the labelled slides that have a feature file; report both kinds of mismatch.

    ``files`` maps slide id -> feature file. A labelled slide without a feature file is an error
    (``missing="error"``, default) or dropped with a warning (``missing="drop"``). Feature files
    without a label are ignored with a warning. Returns the matched table and the warnings.
    """
    matched, warnings = match_rows(table, files, missing)
    counts = Counter(r.label for r in matched.rows)
    present = [c for c in matched.class_names if counts[c] > 0]
    if len(present) < 2:
        raise LabelsError(f"{table.path}: after matching feature files only class(es) {present} remain; "
                          "a classifier needs slides of at least two classes")
    return matched, warnings
