"""Fitting heads on embeddings with scikit-learn, and writing each as a small ONNX graph.

Every head graph takes the raw embedding ("embedding", (N, D)), L2-normalises it (the heads
are fitted on L2-normalised vectors) and outputs class probabilities ("probabilities",
(N, classes)), so a head file is self-contained and can be merged behind its backbone.

scikit-learn is imported when a head is first fitted, not when the server starts (it takes most of a second).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from offshelf.protos.v1 import heads_pb2
from offshelf.service.errors import InvalidArgument

KINDS = ("logreg", "linear-svm", "ncm")
C_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]
NCM_TEMPERATURE = 20.0  # probabilities: softmax of 20 x cosine similarity to the class means
Progress = Callable[[float, str], None]


@dataclass
class FittedHead:
    graph: onnx.ModelProto
    labels: list[str]
    metrics: heads_pb2.HeadMetrics
    class_sums: np.ndarray | None = None  # ncm: per-class sums of vectors, to add classes later
    class_counts: np.ndarray | None = None


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _graph(dim: int, nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [helper.make_node("LpNormalization", ["embedding"], ["unit"], axis=1, p=2), *nodes]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def linear_softmax(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """probabilities = softmax(unit @ W.T + b)."""
    return _graph(
        weights.shape[1],
        [
            helper.make_node("Gemm", ["unit", "W", "b"], ["scores"], transB=1),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
        ],
        {"W": weights, "b": bias},
    )


def calibrated_linear(weights: np.ndarray, bias: np.ndarray, a: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """Platt-calibrated one-vs-rest scores, normalised: p_c = 1 / (1 + exp(a_c f_c + b_c)), / sum_c p_c.

    With two classes the SVM has one decision function f for class 1, and p_0 = 1 - p_1.
    """
    nodes = [
        helper.make_node("Gemm", ["unit", "W", "b"], ["f"], transB=1),
        helper.make_node("Mul", ["f", "a"], ["af"]),
        helper.make_node("Add", ["af", "cb"], ["z"]),
        helper.make_node("Neg", ["z"], ["minus_z"]),
        helper.make_node("Sigmoid", ["minus_z"], ["p"]),
    ]
    if len(bias) == 1:
        nodes += [
            helper.make_node("Sub", ["one", "p"], ["p0"]),
            helper.make_node("Concat", ["p0", "p"], ["probabilities"], axis=1),
        ]
        extra = {"one": np.ones(1)}
    else:
        nodes += [
            helper.make_node("ReduceSum", ["p", "axes"], ["total"], keepdims=1),
            helper.make_node("Div", ["p", "total"], ["probabilities"]),
        ]
        extra = {}
    graph = _graph(weights.shape[1], nodes, {"W": weights, "b": bias, "a": a, "cb": b, **extra})
    if len(bias) > 1:
        graph.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    return graph


def _folds(y: np.ndarray) -> int:
    return int(min(5, np.bincount(y).min()))


def _metrics(model, x: np.ndarray, y: np.ndarray, labels: list[str], c: float = 0.0) -> heads_pb2.HeadMetrics:
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = _folds(y)
    if folds < 2:  # too few examples per class to cross-validate
        return heads_pb2.HeadMetrics(examples=len(y), folds=0, c=c)
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, x, y, cv=cv)
    return heads_pb2.HeadMetrics(
        examples=len(y),
        folds=folds,
        cv_accuracy=float(np.mean(predicted == y)),
        c=c,
        confusion=confusion_matrix(y, predicted, labels=range(len(labels))).flatten().tolist(),
    )


def fit(
    kind: str, vectors: np.ndarray, labels: list[str], progress: Progress, previous: FittedHead | None = None
) -> FittedHead:
    """Fits a head of `kind` on vectors with string labels (ncm with `previous`: adds or replaces classes)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import LinearSVC

    if kind not in KINDS:
        raise InvalidArgument(f"unknown head kind {kind!r}; choose one of: {', '.join(KINDS)}")
    x = l2_normalise(np.asarray(vectors, np.float32))
    names = sorted(set(labels))
    y = np.array([names.index(label) for label in labels])
    if kind == "ncm":
        return _fit_ncm(x, y, names, progress, previous)
    if len(names) < 2:
        raise InvalidArgument(f"{kind} needs at least 2 classes; got {names}")
    if _folds(y) < 2:
        counts = dict(zip(names, np.bincount(y).tolist(), strict=True))
        raise InvalidArgument(f"{kind} needs at least 2 examples per class for cross-validation; got {counts}")
    cv = StratifiedKFold(_folds(y), shuffle=True, random_state=0)
    if kind == "logreg":
        progress(0.1, f"choosing C among {C_GRID} by {cv.n_splits}-fold cross-validation")
        search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": C_GRID}, cv=cv).fit(x, y)
        best = search.best_estimator_
        progress(0.7, "cross-validated predictions for the confusion matrix")
        metrics = _metrics(LogisticRegression(C=best.C, max_iter=2000), x, y, names, best.C)
        weights, bias = best.coef_, best.intercept_
        if len(names) == 2:  # sklearn's binary form: one row for class 1
            weights, bias = np.vstack([-weights / 2, weights / 2]), np.array([-bias[0] / 2, bias[0] / 2])
        return FittedHead(linear_softmax(weights, bias), names, metrics)
    progress(0.1, f"choosing C among {C_GRID} by {cv.n_splits}-fold cross-validation")
    search = GridSearchCV(LinearSVC(), {"C": C_GRID}, cv=cv).fit(x, y)
    c = search.best_params_["C"]
    progress(0.5, "calibrating probabilities (sigmoid, cross-validated)")
    calibrated = CalibratedClassifierCV(LinearSVC(C=c), method="sigmoid", cv=cv, ensemble=False).fit(x, y)
    (member,) = calibrated.calibrated_classifiers_
    svm = member.estimator
    a = np.array([cal.a_ for cal in member.calibrators])
    b = np.array([cal.b_ for cal in member.calibrators])
    progress(0.8, "cross-validated predictions for the confusion matrix")
    metrics = _metrics(LinearSVC(C=c), x, y, names, c)
    return FittedHead(calibrated_linear(svm.coef_, svm.intercept_, a, b), names, metrics)


def _fit_ncm(
    x: np.ndarray, y: np.ndarray, names: list[str], progress: Progress, previous: FittedHead | None
) -> FittedHead:
    from sklearn.neighbors import NearestCentroid

    sums = np.stack([x[y == i].sum(axis=0) for i in range(len(names))])
    counts = np.bincount(y, minlength=len(names)).astype(np.float64)
    metrics = _metrics(NearestCentroid(), x, y, names) if len(names) > 1 else heads_pb2.HeadMetrics(examples=len(y))
    if previous is not None and previous.class_sums is not None and previous.class_counts is not None:
        kept = [i for i, label in enumerate(previous.labels) if label not in names]
        names = [previous.labels[i] for i in kept] + names
        sums = np.vstack([previous.class_sums[kept], sums])
        counts = np.concatenate([previous.class_counts[kept], counts])
    progress(0.5, f"class means of {len(names)} classes")
    means = l2_normalise(sums / counts[:, None])
    graph = linear_softmax(NCM_TEMPERATURE * means, np.zeros(len(names)))
    return FittedHead(graph, names, metrics, sums, counts)
