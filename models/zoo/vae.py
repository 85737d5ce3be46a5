"""Variational autoencoder, scored deterministically by reconstructing the mean code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from models.detector import FloatRange, ParamSpec
from models.zoo.reconstruction import ReconstructionDetector, Stack

__all__ = ["VAE"]


class VAE(ReconstructionDetector):
    """MLP variational autoencoder (Kingma and Welling, 2014).

    The encoder gives a mean ``mu`` and a log-variance per latent unit.
    Training maximises the evidence lower bound with a unit-variance Gaussian
    likelihood on the standardised rows: loss = ``0.5 * sum_j (x_j - r_j)**2
    + beta * KL(q(z|x) || N(0, I))`` per row, averaged over the batch, with
    ``z`` sampled by the reparameterisation trick.

    Scoring is deterministic: the row is decoded from ``z = mu`` and the score
    is the mean squared reconstruction error, without the KL term (which
    measures how unusual the code is, not how well the row is explained).
    PyOD samples ``z`` when scoring, so two of its calls rank rows slightly
    differently; here the same row always gets the same score.
    Contributions are each feature's share of the squared error.

    Parameters
    ----------
    beta : float
        Weight of the KL term.  ``beta = 1`` is the plain ELBO with a
        unit-variance likelihood, which on standardised rows tolerates
        reconstruction errors of about one standard deviation and so misses
        subtle outliers; the default 0.1 equals the ELBO with a likelihood
        variance of 0.1 (up to a constant factor of the loss).
    **others
        As :class:`~models.zoo.reconstruction.ReconstructionDetector`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = rng.normal(size=(500, 1))
    >>> X = np.hstack([t, t, -t, 0.1 * rng.normal(size=(500, 1))]).astype(np.float32)
    >>> det = VAE(epochs=50).fit(X)
    >>> s = det.score_samples(np.array([[1, 1, -1, 0], [1, -1, 1, 0]], dtype=np.float32))
    >>> bool(s[1] > 5 * s[0])
    True
    """

    algorithm: ClassVar[str] = "vae"
    code_factor: ClassVar[int] = 2
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        **ReconstructionDetector.search_space,
        "beta": FloatRange(0.01, 1.0, log=True),
    }

    def __init__(
        self,
        *,
        width: int = 64,
        depth: int = 2,
        latent: int = 8,
        epochs: int = 20,
        lr: float = 1e-3,
        batch_size: int = 128,
        dropout: float = 0.0,
        weight_decay: float = 1e-5,
        beta: float = 0.1,
        random_state: int | None = 0,
    ) -> None:
        super().__init__(
            width=width, depth=depth, latent=latent, epochs=epochs, lr=lr,
            batch_size=batch_size, dropout=dropout, weight_decay=weight_decay,
            random_state=random_state,
        )
        self.beta = beta

    def get_params(self) -> dict[str, Any]:
        params = super().get_params()
        params["beta"] = self.beta
        return params

    def _validate_params(self) -> None:
        super()._validate_params()
        if not self.beta >= 0:
            raise ValueError(f"vae needs beta to be >= 0, got {self.beta!r}")

    def _loss(
        self, encoder: Stack, decoder: Stack, z: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        mu, logvar = encoder(z).chunk(2, dim=1)
        # Clamped so exp() cannot overflow early in training.
        logvar = logvar.clamp(-10.0, 10.0)
        code = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        recon = 0.5 * ((decoder(code) - z) ** 2).sum(dim=1)
        kl = -0.5 * (1.0 + logvar - mu**2 - logvar.exp()).sum(dim=1)
        loss: torch.Tensor = (recon + self.beta * kl).mean()
        return loss
