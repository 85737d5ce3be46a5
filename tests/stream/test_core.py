from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.registry import Registry
from stream.core import Scorer, choose_providers
from stream.errors import ScoringError
from stream.synthetic import SyntheticStream


@pytest.fixture(scope="module")
def scorer(registry: Path) -> Scorer:
    return Scorer(Registry(registry).load("default"), providers="auto")


def test_provider_auto_is_cpu_here_and_cuda_is_refused_without_it(scorer: Scorer) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA present")
    assert scorer.provider == "CPUExecutionProvider"
    assert choose_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ScoringError, match="onnxruntime-gpu"):
        choose_providers("cuda")


def test_scores_are_calibrated_and_outliers_flagged_with_top3_contributions(scorer: Scorer) -> None:
    gen = SyntheticStream(n_features=6, seed=3)
    X, _ = gen.sample(2000)
    far = X[:200].copy()
    far[:, [1, 4]] = gen.mean[[1, 4]] + 12 * gen.scale[[1, 4]]
    out = scorer.score(np.vstack([X, far]))
    assert out.score.min() >= 0.0 and out.score.max() <= 1.0
    assert out.anomaly[:2000].mean() < 0.02  # threshold from contamination 0.01 on like data
    assert out.anomaly[2000:].mean() > 0.5
    pos = {r: i for i, r in enumerate(out.anomalous_rows.tolist())}
    pushed = [out.top_features[pos[r]] for r in range(2000, 2200) if r in pos]
    assert np.mean([top[0] in (1, 4) for top in pushed]) >= 0.9  # a pushed feature explains most
    assert (np.diff(out.top_shares, axis=1) <= 1e-7).all()  # largest first
    assert (out.severity[out.anomaly] >= 1).all() and (out.severity[~out.anomaly] == 0).all()


def test_same_rows_score_the_same_alone_or_in_a_batch(scorer: Scorer) -> None:
    X, _ = SyntheticStream(n_features=6, seed=5).sample(64, anomaly_rate=0.1)
    together = scorer.score(X).raw
    alone = np.concatenate([scorer.score(X[i:i + 1]).raw for i in range(64)])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)


def test_empty_batch_and_wrong_width(scorer: Scorer) -> None:
    assert scorer.score(np.empty((0, 6), dtype=np.float32)).score.shape == (0,)
    with pytest.raises(ScoringError, match="expects 6 features"):
        scorer.score(np.zeros((2, 5), dtype=np.float32))


def test_nan_is_imputed_in_the_graph(scorer: Scorer) -> None:
    X = np.full((1, 6), np.nan, dtype=np.float32)
    out = scorer.score(X)
    assert np.isfinite(out.raw).all()
