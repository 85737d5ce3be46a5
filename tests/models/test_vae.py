"""What only the VAE has: scores from the mean code, no sampling when scoring, ``beta``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from models.pipeline import Pipeline
from models.preprocessing import Preprocessor
from models.zoo import VAE, make_detector
from models.zoo.reconstruction import Layer


@pytest.fixture(scope="module")
def X() -> NDArray[np.float32]:
    rng = np.random.default_rng(8)
    t = rng.normal(size=(800, 2))
    X = np.hstack([t, t @ [[1.0, -0.5], [0.3, 2.0]], 0.2 * rng.normal(size=(800, 2))])
    return X.astype(np.float32)


@pytest.fixture(scope="module")
def fitted(X: NDArray[np.float32]) -> VAE:
    return VAE(epochs=10, latent=2).fit(X)


def _mlp(layers: list[Layer], h: NDArray[np.float64]) -> NDArray[np.float64]:
    for i, (w, b) in enumerate(layers):
        h = h @ w.T.astype(np.float64) + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_score_is_reconstruction_of_the_mean_code(fitted: VAE, X: NDArray[np.float32]) -> None:
    """Recomputed in float64 from the weights: decode(mu), no sample, no KL term."""
    z = (X.astype(np.float64) - fitted.mean_) / fitted.sd_
    code = _mlp(fitted.encoder_, z)
    assert code.shape[1] == 2 * fitted.latent_  # means, then log-variances
    r = _mlp(fitted.decoder_, code[:, : fitted.latent_])
    np.testing.assert_allclose(fitted.score_samples(X), ((z - r) ** 2).mean(axis=1), rtol=1e-4)


def test_scoring_draws_nothing(fitted: VAE, X: NDArray[np.float32]) -> None:
    np.testing.assert_array_equal(fitted.score_samples(X), fitted.score_samples(X))
    pipe = Pipeline(preprocessor=Preprocessor(), detector=VAE(epochs=2)).fit(X)
    ops = {n.op_type for n in onnx.load_from_string(pipe.to_onnx(list("abcdef"))).graph.node}
    assert not {op for op in ops if op.startswith("Random")}


def test_beta_is_a_hyperparameter(X: NDArray[np.float32]) -> None:
    assert make_detector("vae", beta=0.5).get_params()["beta"] == 0.5
    assert "beta" in VAE.search_space
    loose, tight = (VAE(epochs=5, beta=b).fit(X).score_samples(X) for b in (1.0, 0.01))
    # A smaller KL weight lets the decoder fit the rows more closely.
    assert tight.mean() < loose.mean()
    with pytest.raises(ValueError, match=r"beta to be >= 0, got -1"):
        VAE(beta=-1.0).fit(X)
