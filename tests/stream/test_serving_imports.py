"""The serving path stays light: no torch, pyod, optuna, scikit-learn or training."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "pyod", "optuna", "sklearn", "training", "onnx", "pandas")

PROBE = """
import importlib, pkgutil, sys
import stream
names = [m.name for m in pkgutil.walk_packages(stream.__path__, "stream.")
         if not m.name.endswith(("cli", "__main__"))]
names += ["models", "models.artifact", "models.registry", "models.calibration", "models.errors"]
for name in names:
    importlib.import_module(name)
print(" ".join(sorted(names)))
print(" ".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_serving_modules_import_no_training_stack() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(HEAVY=HEAVY)], capture_output=True,
                         text=True, check=True)
    imported, heavy = (out.stdout.splitlines() + ["", ""])[:2]
    assert "stream.kafka" in imported.split() and "stream.core" in imported.split()
    assert heavy == "", f"the serving path imports {heavy}"
