"""Linear probe: a logistic-regression classifier on frozen image features (CLIP paper sec. 3.2: scikit-learn's
L-BFGS logistic regression, its L2 strength chosen on held-out data)."""

from __future__ import annotations

import numpy as np

from plinth.common import PlinthError


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray,
              seed: int = 0) -> dict[str, float]:
    """Fit on (train_x, train_y), choose C on a 20% slice of the training features, score on (eval_x, eval_y).

    Features are standardised with the training statistics. Returns accuracy, the chosen C and the class count.
    Raises PlinthError when scikit-learn is missing or the training labels hold fewer than two classes.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise PlinthError("the linear probe needs scikit-learn: pip install 'plinth[vision]'") from None
    keep = train_y >= 0
    train_x, train_y = train_x[keep], train_y[keep]
    if len(np.unique(train_y)) < 2:
        raise PlinthError("the linear probe needs labelled training images of at least two classes")
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, eval_x = (train_x - mean) / std, (eval_x - mean) / std
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_x))
    cut = max(1, len(order) // 5)
    held, fit = order[:cut], order[cut:]
    best_c, best = 1.0, -1.0
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=1000).fit(train_x[fit], train_y[fit])
        score = clf.score(train_x[held], train_y[held])
        if score > best:
            best_c, best = c, score
    clf = LogisticRegression(C=best_c, max_iter=1000).fit(train_x, train_y)
    return {"accuracy": float(clf.score(eval_x, eval_y)), "C": best_c, "classes": int(len(np.unique(train_y))),
            "train_images": int(len(train_x)), "eval_images": int(len(eval_x))}
