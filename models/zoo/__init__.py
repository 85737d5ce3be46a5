"""The detector zoo: every algorithm the search can pick, by name.

Examples
--------
>>> make_detector("iforest", n_estimators=10)
IForest(n_estimators=10, max_samples='auto', max_features=1.0, random_state=0)
>>> make_detector("nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown algorithm 'nope'; known: ...
"""

from __future__ import annotations

import inspect
from typing import Any

from models.detector import Detector
from models.zoo.autoencoder import AutoEncoder
from models.zoo.cblof import CBLOF
from models.zoo.copod import COPOD
from models.zoo.ecod import ECOD
from models.zoo.hbos import HBOS
from models.zoo.iforest import IForest
from models.zoo.knn import KNN
from models.zoo.loda import LODA
from models.zoo.lof import LOF
from models.zoo.mcd import MCD
from models.zoo.ocsvm import OCSVM
from models.zoo.pca import PCA
from models.zoo.vae import VAE

__all__ = [
    "ALGORITHMS",
    "CBLOF",
    "ECOD",
    "KNN",
    "LOF",
    "OCSVM",
    "VAE",
    "AutoEncoder",
    "IForest",
    "make_detector",
]

ALGORITHMS: dict[str, type[Detector]] = {
    "knn": KNN,
    "lof": LOF,
    "ocsvm": OCSVM,
    "cblof": CBLOF,
    "autoencoder": AutoEncoder,
    "vae": VAE,
    "iforest": IForest,
    "ecod": ECOD,
    "copod": COPOD,
    "hbos": HBOS,
    "pca": PCA,
    "mcd": MCD,
    "loda": LODA,
}


def make_detector(algorithm: str, **params: Any) -> Detector:
    """Build the detector named ``algorithm`` with hyperparameters ``params``.

    Raises
    ------
    ValueError
        If ``algorithm`` is not in :data:`ALGORITHMS`.
    TypeError
        If a parameter is not a hyperparameter of that algorithm.
    """
    try:
        cls = ALGORITHMS[algorithm]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {known}") from None
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(
            f"{algorithm} has no hyperparameter {unknown[0]!r}; "
            f"it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    return cls(**params)
