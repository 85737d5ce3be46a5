"""Autoencoder: an MLP trained to reconstruct its input, scored by reconstruction error."""

from __future__ import annotations

from typing import ClassVar

import torch

from models.zoo.reconstruction import ReconstructionDetector, Stack

__all__ = ["AutoEncoder"]


class AutoEncoder(ReconstructionDetector):
    """MLP autoencoder; score = mean squared reconstruction error per row.

    Rows are standardised with the training mean and standard deviation and
    encoded down to ``latent`` units; the network is trained with Adam on the
    mean squared error.  The score is that error for each row (higher = more
    anomalous) and a feature's contribution is its share of the squared
    error.  Hyperparameters and the determinism and export rules are those of
    :class:`~models.zoo.reconstruction.ReconstructionDetector`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(500, 1))
    >>> X = np.hstack([t, t, -t, 0.1 * rng.normal(size=(500, 1))]).astype(np.float32)
    >>> det = AutoEncoder(epochs=50).fit(X)
    >>> s = det.score_samples(np.array([[1, 1, -1, 0], [1, -1, 1, 0]], dtype=np.float32))
    >>> bool(s[1] > 5 * s[0])
    True
    """

    algorithm: ClassVar[str] = "autoencoder"

    def _loss(
        self, encoder: Stack, decoder: Stack, z: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        loss: torch.Tensor = ((decoder(encoder(z)) - z) ** 2).mean()
        return loss
