"""Linear probes of the artifact study: position, pixels (local information) and image class (global).

scikit-learn's linear models, on features standardised with the training split's mean and
standard deviation (:class:`sklearn.preprocessing.StandardScaler`), so one regulariser means the
same thing for every backbone:

* **Position**: multinomial logistic regression (lbfgs, L2 penalty, ``C = 1``) from a patch
  token to its cell of the patch grid (rows*cols classes). Scores: top-1 accuracy and the mean
  Euclidean distance, in patches, between the predicted and the true cell.
* **Pixels**: ridge regression from a patch token to the 3*p*p normalised pixel values under its
  patch, the ridge strength chosen by generalised cross-validation on the training split among
  10^-2 .. 10^4 (:class:`sklearn.linear_model.RidgeCV`). Score (``l2_error``): mean over test
  tokens of ``||prediction - pixels||_2 / sqrt(3*p*p)``, the root-mean-square error per pixel value
  in units of the normalisation's std; ``baseline_l2_error`` is the same for predicting the
  training split's mean patch.
* **Global** (image labels): logistic regression (L2, ``C = 1``) from one token per image (CLS,
  one normal patch, one outlier patch) to the image's label: multinomial with top-1 accuracy for
  one label per image, one-vs-rest with mean average precision (over the classes with a positive
  and a negative test image) for several.

Every probe is fitted on the training split's tokens and scored on the test split's, split by
image (:mod:`lostreg.study.run`); the results say how many tokens or images each rests on. A probe
that cannot be fitted or scored (fewer than two classes, no test token) gives None with a note,
never a number made of nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["ProbeSettings", "global_probe", "pixel_probe", "position_probe"]


@dataclass(frozen=True)
class ProbeSettings:
    """The probes' regularisers (see the module docstring); recorded in ``artifacts.json``."""

    position_c: float = 1.0
    global_c: float = 1.0
    ridge_alphas: tuple[float, ...] = (1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4)
    max_iter: int = 1000

    def describe(self) -> dict[str, str]:
        return {
            "features": "standardised with the training split's mean and std (StandardScaler)",
            "position": f"LogisticRegression(lbfgs, L2, C={self.position_c:g}, max_iter={self.max_iter}), multinomial",
            "pixels": "RidgeCV(alpha chosen by generalised cross-validation on the training split among "
                      + ", ".join(f"{a:g}" for a in self.ridge_alphas) + ")",
            "global": f"LogisticRegression(lbfgs, L2, C={self.global_c:g}, max_iter={self.max_iter}); "
                      "one-vs-rest for multi-label",
        }


def _fit_quietly(fit: Any, notes: list[str], what: str) -> Any:
    """Run ``fit()``; a ConvergenceWarning becomes a note instead of stderr noise."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = fit()
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"{what}: the solver did not converge within its iteration limit")
    return result


def _scaler(train_x: np.ndarray) -> Any:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(train_x.astype(np.float64))


def _standard32(scaler: Any, x: np.ndarray) -> np.ndarray:
    """Standardised features as float32 for the logistic regressions: lbfgs keeps float32 through
    (about 1.5x faster on the ~10^4 x 10^3 problems here); the standardisation itself is float64."""
    return scaler.transform(x.astype(np.float64)).astype(np.float32)


def position_probe(train_x: np.ndarray, train_cell: np.ndarray, tests: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   grid_hw: tuple[int, int], settings: ProbeSettings = ProbeSettings()) -> dict[str, Any]:
    """Linear position classification, scored per kind of test token.

    Args:
        train_x: (N, D) float training tokens.
        train_cell: (N,) int64 grid cell of each (row * cols + col).
        tests: kind (``normal``, ``outlier``) -> ((M, D) tokens, (M,) cells); M may be 0.
        grid_hw: (rows, cols) of the grid.

    Returns:
        ``{"train_tokens", "classes", "chance_top1", kind: {"top1", "mean_distance", "tokens"} or
        None, "notes"}``; top-1 is a fraction in [0, 1], distances are in patches.
    """
    from sklearn.linear_model import LogisticRegression

    notes: list[str] = []
    classes = np.unique(train_cell)
    out: dict[str, Any] = {"train_tokens": int(train_x.shape[0]), "classes": int(classes.size),
                           "chance_top1": 1.0 / (grid_hw[0] * grid_hw[1]), "iterations": None}
    if classes.size < 2:
        notes.append("fewer than two grid cells among the training tokens: no position probe")
        return {**out, **{kind: None for kind in tests}, "notes": notes}
    scaler = _scaler(train_x)
    model = LogisticRegression(C=settings.position_c, max_iter=settings.max_iter)
    _fit_quietly(lambda: model.fit(_standard32(scaler, train_x), train_cell), notes, "position probe")
    out["iterations"] = int(np.max(model.n_iter_))  # the solver's, of at most settings.max_iter
    cols = grid_hw[1]
    for kind, (x, cell) in tests.items():
        if x.shape[0] == 0:
            out[kind] = None
            notes.append(f"no {kind} test tokens: no position score for them")
            continue
        predicted = model.predict(_standard32(scaler, x))
        distance = np.hypot(predicted // cols - cell // cols, predicted % cols - cell % cols)
        out[kind] = {"top1": float(np.mean(predicted == cell)), "mean_distance": float(distance.mean()),
                     "tokens": int(x.shape[0])}
    return {**out, "notes": notes}


def pixel_probe(train_x: np.ndarray, train_pixels: np.ndarray, tests: Mapping[str, tuple[np.ndarray, np.ndarray]],
                settings: ProbeSettings = ProbeSettings()) -> dict[str, Any]:
    """Linear pixel reconstruction, scored per kind of test token.

    Args:
        train_x: (N, D) float training tokens.
        train_pixels: (N, 3*p*p) float pixels under each token's patch (normalised input).
        tests: kind -> ((M, D) tokens, (M, 3*p*p) pixels).

    Returns:
        ``{"train_tokens", "alpha", kind: {"l2_error", "baseline_l2_error", "tokens"} or None, "notes"}``.
    """
    from sklearn.linear_model import RidgeCV

    notes: list[str] = []
    out: dict[str, Any] = {"train_tokens": int(train_x.shape[0])}
    if train_x.shape[0] < 2:
        notes.append("fewer than two training tokens: no pixel probe")
        return {**out, "alpha": None, **{kind: None for kind in tests}, "notes": notes}
    scaler = _scaler(train_x)
    targets = train_pixels.astype(np.float64)
    model = RidgeCV(alphas=settings.ridge_alphas)
    _fit_quietly(lambda: model.fit(scaler.transform(train_x.astype(np.float64)), targets), notes, "pixel probe")
    mean_patch = targets.mean(axis=0)
    width = math.sqrt(targets.shape[1])
    out["alpha"] = float(model.alpha_)
    for kind, (x, pixels) in tests.items():
        if x.shape[0] == 0:
            out[kind] = None
            notes.append(f"no {kind} test tokens: no pixel score for them")
            continue
        y = pixels.astype(np.float64)
        predicted = model.predict(scaler.transform(x.astype(np.float64)))
        out[kind] = {
            "l2_error": float(np.mean(np.linalg.norm(predicted - y, axis=1)) / width),
            "baseline_l2_error": float(np.mean(np.linalg.norm(mean_patch - y, axis=1)) / width),
            "tokens": int(x.shape[0]),
        }
    return {**out, "notes": notes}


def global_probe(train_x: np.ndarray, train_labels: np.ndarray, test_x: np.ndarray, test_labels: np.ndarray,
                 class_names: list[str], multilabel: bool, settings: ProbeSettings = ProbeSettings()) -> dict[str, Any]:
    """Image classification from one token per image.

    Args:
        train_x, test_x: (N, D) / (M, D) one token per image.
        train_labels, test_labels: (N, K) / (M, K) bool multi-hot over ``class_names`` (exactly one
            True per row unless ``multilabel``).
        multilabel: one-vs-rest and mean average precision (True), or multinomial and top-1 (False).

    Returns:
        ``{"metric": "mAP" | "top1", "value" (fraction in [0, 1]) or None, "train_images",
        "test_images", "classes_scored", "notes"}``.
    """
    from sklearn.linear_model import LogisticRegression

    notes: list[str] = []
    metric = "mAP" if multilabel else "top1"
    out: dict[str, Any] = {"metric": metric, "value": None, "train_images": int(train_x.shape[0]),
                           "test_images": int(test_x.shape[0]), "classes_scored": 0}
    if test_x.shape[0] == 0:
        return {**out, "notes": ["no test images"]}
    present = train_labels.any(axis=0)
    if multilabel:
        from sklearn.metrics import average_precision_score

        # A class needs positives and negatives in both splits to be fitted and scored.
        usable = [k for k in range(len(class_names))
                  if present[k] and not train_labels[:, k].all() and test_labels[:, k].any() and not test_labels[:, k].all()]
        if not usable:
            return {**out, "notes": ["no class has positive and negative images in both splits"]}
        scaler = _scaler(train_x)
        train_s, test_s = _standard32(scaler, train_x), _standard32(scaler, test_x)
        scores = []
        for k in usable:
            model = LogisticRegression(C=settings.global_c, max_iter=settings.max_iter)
            _fit_quietly(lambda: model.fit(train_s, train_labels[:, k]), notes, f"global probe ({class_names[k]})")
            scores.append(average_precision_score(test_labels[:, k], model.decision_function(test_s)))
        notes = sorted(set(notes))
        return {**out, "value": float(np.mean(scores)), "classes_scored": len(usable), "notes": notes}
    train_y, test_y = train_labels.argmax(axis=1), test_labels.argmax(axis=1)
    if np.unique(train_y).size < 2:
        return {**out, "notes": ["fewer than two classes among the training images"]}
    scaler = _scaler(train_x)
    model = LogisticRegression(C=settings.global_c, max_iter=settings.max_iter)
    _fit_quietly(lambda: model.fit(_standard32(scaler, train_x), train_y), notes, "global probe")
    predicted = model.predict(_standard32(scaler, test_x))
    return {**out, "value": float(np.mean(predicted == test_y)), "classes_scored": int(np.unique(test_y).size),
            "notes": notes}
