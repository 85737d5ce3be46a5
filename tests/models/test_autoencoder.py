"""The reconstruction detectors' own rules, checked on both the autoencoder and the VAE.

Both share :mod:`models.zoo.reconstruction` (training loop, seeding, native
scorer, export), so these tests run against each; ``test_vae.py`` adds what
only the VAE has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from models.export import check_parity, onnx_scores
from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import VAE, AutoEncoder
from models.zoo.reconstruction import ReconstructionDetector

N_FEATURES = 12


def low_rank(seed: int, n: int) -> NDArray[np.float32]:
    """12-d rows near a 3-d subspace, features on different scales."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).normal(size=(3, N_FEATURES))
    X = rng.normal(size=(n, 3)) @ mixing + 0.1 * rng.normal(size=(n, N_FEATURES))
    return (X * np.geomspace(0.01, 100.0, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module", params=[AutoEncoder, VAE], ids=["autoencoder", "vae"])
def cls(request: pytest.FixtureRequest) -> type[ReconstructionDetector]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    return low_rank(seed=1, n=1500)


@pytest.fixture(scope="module")
def fitted(cls: type[ReconstructionDetector], X: NDArray[np.float32]) -> ReconstructionDetector:
    return cls(epochs=30).fit(X)


def test_same_seed_same_weights_other_seed_not(
    cls: type[ReconstructionDetector], X: NDArray[np.float32]
) -> None:
    a, b, c = (cls(epochs=3, dropout=0.1, random_state=s).fit(X[:600]) for s in (5, 5, 6))
    for (wa, ba), (wb, bb) in zip(a.encoder_ + a.decoder_, b.encoder_ + b.decoder_, strict=True):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    assert not np.array_equal(a.score_samples(X), c.score_samples(X))


def test_fit_restores_torch_global_state(
    cls: type[ReconstructionDetector], X: NDArray[np.float32]
) -> None:
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    cls(epochs=2, dropout=0.2).fit(X[:300])
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_onnx_parity_relative(cls: type[ReconstructionDetector], X: NDArray[np.float32]) -> None:
    pipe = Pipeline(preprocessor=Preprocessor(scaler="robust"), detector=cls(epochs=5)).fit(X)
    rows = low_rank(seed=2, n=400)
    rows[:40] += 8.0 * rows.std(axis=0) * np.sign(np.random.default_rng(3).normal(size=(40, 12)))
    model = pipe.to_onnx([f"f{i}" for i in range(N_FEATURES)])
    assert check_parity(pipe, model, rows) <= cls.parity_tolerance
    native, exported = pipe.score_samples(rows), onnx_scores(model, rows)[0]
    assert np.max(np.abs(exported - native) / native) <= 1e-5


def test_fit_steps_yield_each_epoch_and_score_between(
    cls: type[ReconstructionDetector], X: NDArray[np.float32]
) -> None:
    det = cls(epochs=4)
    fractions, scores = [], []
    for fraction in det.fit_steps(X[:500]):
        fractions.append(fraction)
        scores.append(det.score_samples(X[:100]))
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert all(np.isfinite(s).all() for s in scores)
    assert not np.array_equal(scores[0], scores[-1])

    # A pruned search stops early: the partly trained model still scores.
    pruned = cls(epochs=4)
    steps = pruned.fit_steps(X[:500])
    next(steps)
    np.testing.assert_array_equal(pruned.score_samples(X[:100]), scores[0])


def test_far_feature_ranks_first(
    fitted: ReconstructionDetector, X: NDArray[np.float32]
) -> None:
    rows = low_rank(seed=4, n=240)
    far = np.arange(len(rows)) % N_FEATURES
    rows[np.arange(len(rows)), far] += 10.0 * X.std(axis=0)[far]
    top = fitted.contributions(rows).argmax(axis=1)
    assert np.mean(top == far) >= 0.9


def test_roc_auc_floor(fitted: ReconstructionDetector) -> None:
    rows = low_rank(seed=5, n=1000)
    y = np.zeros(len(rows), dtype=np.int8)
    y[:30] = 1
    # Off the subspace by 4 sd of each feature's noise scale in a random direction.
    noise_sd = 0.1 * np.geomspace(0.01, 100.0, N_FEATURES)
    rows[:30] += 4.0 * noise_sd * np.random.default_rng(6).normal(size=(30, N_FEATURES))
    assert roc_auc_score(y, fitted.score_samples(rows)) >= 0.9


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dropout": 1.5}, r"dropout to be in \[0, 1\), got 1.5"),
        ({"epochs": 0}, "epochs to be an int >= 1, got 0"),
        ({"width": 2.5}, "width to be an int >= 1, got 2.5"),
    ],
)
def test_bad_hyperparameters_raise_at_fit(
    cls: type[ReconstructionDetector], X: NDArray[np.float32], params: dict[str, Any], message: str
) -> None:
    det = cls(**params)
    with pytest.raises(ValueError, match=message):
        det.fit(X)


def test_scores_read_only_and_reversed_rows(
    fitted: ReconstructionDetector, X: NDArray[np.float32]
) -> None:
    rows = X[:50].copy()
    rows.flags.writeable = False
    expected = fitted.score_samples(X[:50])
    np.testing.assert_array_equal(fitted.score_samples(rows), expected)
    np.testing.assert_array_equal(fitted.score_samples(rows[::-1])[::-1], expected)
