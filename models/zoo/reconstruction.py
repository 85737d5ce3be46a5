"""Reconstruction-error detectors: the shared part of the autoencoder and the VAE.

A row is standardised with the training mean and standard deviation, passed
through an MLP encoder and decoder, and scored by its mean squared
reconstruction error (in standard deviations, so the score's scale does not
depend on the pipeline's scaler).  Each feature's contribution is its share
of the squared error.

Three choices keep the scores reproducible and exportable:

- **Own random stream.**  Weight initialisation, shuffling, dropout and the
  VAE's sampling draw from a ``torch.Generator`` seeded with
  ``random_state``; the global torch RNG is never touched.  Each epoch runs on
  one intra-op thread (restored after), so the same seed gives bit-identical
  weights.
- **Batch-independent native scores.**  MKL's matrix products round
  differently for different batch sizes, so a row scored alone would differ
  in the last bits from the same row scored in a batch.  The native scorer
  therefore computes each layer as a broadcast multiply and a sum over the
  input axis: every output is reduced in the same order whatever the batch.
- **Weights as numpy arrays.**  After each epoch the weights are copied out
  of the training network; scoring, pickling and the ONNX export use only
  these arrays, so a fitted detector holds no ``nn.Module``.

The ONNX graph is a ``torch.onnx.export`` of the same computation (plain
``Gemm`` nodes) merged into the pipeline's graph; it matches the native
scores to float32 rounding.
"""

from __future__ import annotations

import io
import warnings
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import pairwise
from typing import Any, ClassVar

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from torch import nn

from models.detector import Choice, Detector, FloatRange, IntRange, ParamSpec
from models.onnx_graph import OPSET, GraphBuilder, row_shares

__all__ = ["Layer", "ReconstructionDetector", "Stack"]

#: One linear layer as arrays: weight [out, in], bias [out].
Layer = tuple[NDArray[np.float32], NDArray[np.float32]]
# Rows per chunk of the native scorer: bounds the [rows, out, in] product tensor.
_CELLS_PER_CHUNK = 1 << 22


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread (restored on exit): reductions then run in one fixed order.

    ``torch.use_deterministic_algorithms`` is left alone: every op used here is
    deterministic on one CPU thread already, and its first call imports
    ``torch._dynamo`` (1-4 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Linear(nn.Module):
    """``y = h @ weight.T + bias``; exported as one ``Gemm``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    @classmethod
    def random(cls, n_in: int, n_out: int, gen: torch.Generator) -> _Linear:
        """Initialised like ``nn.Linear``, but from ``gen`` instead of the global RNG."""
        bound = 1.0 / float(np.sqrt(n_in))
        weight = torch.empty(n_out, n_in).uniform_(-bound, bound, generator=gen)
        return cls(weight, torch.empty(n_out).uniform_(-bound, bound, generator=gen))

    @classmethod
    def of(cls, layer: Layer) -> _Linear:
        return cls(torch.from_numpy(layer[0].copy()), torch.from_numpy(layer[1].copy()))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(h, self.weight, self.bias)

    def array(self) -> Layer:
        return self.weight.detach().numpy().copy(), self.bias.detach().numpy().copy()


class Stack(nn.Module):
    """Linear layers with ReLU and dropout between them (none after the last)."""

    def __init__(self, layers: list[_Linear], dropout: float, gen: torch.Generator | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout
        self.gen = gen

    @classmethod
    def random(cls, sizes: list[int], dropout: float, gen: torch.Generator) -> Stack:
        return cls([_Linear.random(a, b, gen) for a, b in pairwise(sizes)], dropout, gen)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = torch.relu(h)
                if self.training and self.dropout > 0:
                    # nn.Dropout draws from the global RNG; this draws from ours.
                    keep = torch.rand(h.shape, generator=self.gen) >= self.dropout
                    h = h * keep / (1.0 - self.dropout)
        return h

    def arrays(self) -> list[Layer]:
        return [layer.array() for layer in self.layers if isinstance(layer, _Linear)]


class _Scorer(nn.Module):
    """What the ONNX graph computes: standardise, encode, decode, squared error."""

    mean: torch.Tensor
    sd: torch.Tensor

    def __init__(
        self,
        mean: NDArray[np.float32],
        sd: NDArray[np.float32],
        encoder: list[Layer],
        decoder: list[Layer],
        latent: int,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.copy()))
        self.register_buffer("sd", torch.from_numpy(sd.copy()))
        self.encoder = Stack([_Linear.of(layer) for layer in encoder], 0.0, None)
        self.decoder = Stack([_Linear.of(layer) for layer in decoder], 0.0, None)
        self.latent = latent
        # The VAE's encoder also gives log-variances, dropped here (decided now, not traced).
        self.slice_code = encoder[-1][0].shape[0] != latent

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x - self.mean) / self.sd
        code = self.encoder(z)
        if self.slice_code:
            code = code[:, : self.latent]
        err = (z - self.decoder(code)) ** 2
        return err.mean(dim=1), err


class ReconstructionDetector(Detector):
    """Base of the MLP reconstruction detectors (see the module docstring).

    Parameters
    ----------
    width : int
        Units of the first hidden layer; each further layer halves it (never
        below ``latent``).
    depth : int
        Hidden layers in the encoder; the decoder mirrors them.
    latent : int
        Size of the code.  Capped at ``max(1, D // 2)`` for ``D`` features, so
        the network cannot learn the identity.
    epochs : int
        Passes over the training rows.
    lr : float
        Adam's learning rate.
    batch_size : int
        Rows per gradient step.
    dropout : float
        Dropout rate after each hidden layer while training, in ``[0, 1)``.
    weight_decay : float
        Adam's L2 penalty.
    random_state : int or None
        Seed; the same seed gives identical scores.
    """

    scale_sensitive: ClassVar[bool] = True
    # Scores are mean squared errors in training standard deviations; float32
    # rounding in two different evaluation orders stays near 1e-6 relative,
    # i.e. below 1e-4 for scores up to ~100 (rows ~10 sd out in every feature).
    parity_tolerance: ClassVar[float] = 1e-4
    exact_inputs: ClassVar[bool] = False
    search_space: ClassVar[Mapping[str, ParamSpec]] = {
        "width": Choice((16, 32, 64, 128)),
        "depth": IntRange(1, 3),
        "latent": Choice((2, 4, 8, 16)),
        "epochs": IntRange(5, 100, log=True),
        "lr": FloatRange(1e-4, 1e-2, log=True),
        "dropout": FloatRange(0.0, 0.3),
        "weight_decay": FloatRange(1e-6, 1e-2, log=True),
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
        random_state: int | None = 0,
    ) -> None:
        self.width = width
        self.depth = depth
        self.latent = latent
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "depth": self.depth,
            "latent": self.latent,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "dropout": self.dropout,
            "weight_decay": self.weight_decay,
            "random_state": self.random_state,
        }

    # -- what the subclasses define -------------------------------------------------

    #: Encoder outputs per latent unit: 1 for the autoencoder, 2 (mean, log-variance) for the VAE.
    code_factor: ClassVar[int] = 1

    @abstractmethod
    def _loss(
        self, encoder: Stack, decoder: Stack, z: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Training loss of a batch ``z`` of standardised rows."""

    # -- fitting --------------------------------------------------------------------

    def _validate_params(self) -> None:
        for name in ("width", "depth", "latent", "epochs", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{self.algorithm} needs {name} to be an int >= 1, got {value!r}")
        for name, ok, expected in [
            ("lr", self.lr > 0, "> 0"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
        ]:
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"{self.algorithm} needs {name} to be {expected}, got {value!r}")

    def _fit(self, X: NDArray[np.float32]) -> None:
        for _ in self._fit_steps(X):
            pass

    def _fit_steps(self, X: NDArray[np.float32]) -> Iterator[float]:
        self._validate_params()
        n, d = X.shape
        mean = X.astype(np.float64).mean(axis=0)
        sd = X.astype(np.float64).std(axis=0)
        self.mean_ = mean.astype(np.float32)
        self.sd_ = np.where(sd.astype(np.float32) > 0, sd, 1.0).astype(np.float32)
        self.latent_ = min(self.latent, max(1, d // 2))
        hidden = [max(self.width >> i, self.latent_) for i in range(self.depth)]
        Z = torch.from_numpy((X - self.mean_) / self.sd_)

        gen = torch.Generator()
        if self.random_state is None:
            gen.seed()
        else:
            gen.manual_seed(self.random_state)
        with _one_thread():
            encoder = Stack.random([d, *hidden, self.latent_ * self.code_factor], self.dropout, gen)
            decoder = Stack.random([self.latent_, *hidden[::-1], d], self.dropout, gen)
            params = [*encoder.parameters(), *decoder.parameters()]
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        encoder.train()
        decoder.train()
        for epoch in range(1, self.epochs + 1):
            with _one_thread():
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, self.batch_size):
                    batch = Z[order[start : start + self.batch_size]]
                    loss = self._loss(encoder, decoder, batch, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
                self.encoder_ = encoder.arrays()
                self.decoder_ = decoder.arrays()
            yield epoch / self.epochs

    # -- scoring --------------------------------------------------------------------

    def _errors(self, X: NDArray[np.float32]) -> NDArray[np.float32]:
        """Squared reconstruction error per cell, float32, independent of the batch."""
        cells = max(w.size for w, _ in [*self.encoder_, *self.decoder_])
        chunk = max(1, _CELLS_PER_CHUNK // cells)
        out = np.empty(X.shape, dtype=np.float32)
        enc = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in self.encoder_]
        dec = [(torch.from_numpy(w), torch.from_numpy(b)) for w, b in self.decoder_]
        mean, sd = torch.from_numpy(self.mean_), torch.from_numpy(self.sd_)
        with torch.inference_mode():
            for start in range(0, X.shape[0], chunk):
                # A copy: X may be read-only or have negative strides, which from_numpy refuses.
                z = (torch.from_numpy(X[start : start + chunk].copy()) - mean) / sd
                code = _run_exact(enc, z)[:, : self.latent_]
                out[start : start + chunk] = ((z - _run_exact(dec, code)) ** 2).numpy()
        return out

    def _score(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        err = torch.from_numpy(self._errors(X))
        return err.mean(dim=1).numpy().astype(np.float64)

    def _contributions(self, X: NDArray[np.float32]) -> NDArray[np.float64]:
        return row_shares(self._errors(X))

    # -- export ---------------------------------------------------------------------

    def onnx_graph(self, g: GraphBuilder, x: str) -> tuple[str, str]:
        scorer = _Scorer(self.mean_, self.sd_, self.encoder_, self.decoder_, self.latent_).eval()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                scorer,
                (torch.zeros(1, self.n_features_in_),),
                buf,  # type: ignore[arg-type]  # file-like objects are documented
                input_names=["x"],
                output_names=["score", "errors"],
                dynamic_axes={"x": {0: "N"}, "score": {0: "N"}, "errors": {0: "N"}},
                opset_version=OPSET,
                dynamo=False,
            )
        model = onnx.load_from_string(buf.getvalue())
        outputs = g.include(model, {"x": x}, prefix=self.algorithm)
        return outputs["score"], g.row_shares(outputs["errors"])


def _run_exact(layers: list[tuple[torch.Tensor, torch.Tensor]], h: torch.Tensor) -> torch.Tensor:
    """The MLP, each output reduced over its inputs in one fixed order (see module docstring)."""
    for i, (w, b) in enumerate(layers):
        h = (h.unsqueeze(1) * w).sum(dim=2) + b
        if i < len(layers) - 1:
            h = torch.relu(h)
    return h
