"""Build hook: compiles the package's C sources into stream/_native/.

* ``neighbours.c``, the neighbour search: plain C loaded with ctypes
  (``stream/native.py``), so it does not depend on the Python version.
* ``grading.c``, the calibration, threshold and severity of a batch
  (``stream/core.py``), ``decoding.c``, plain JSON events straight into
  the feature matrix (``stream/decoding.py``), and ``records.c``, a batch's
  score records straight to JSON (``stream/records.py``): CPython extension modules,
  built for the Python that builds the wheel (its headers, ``Python.h``, are
  needed).

With an extension the wheel is tagged for that Python
(``cpXY-cpXY-<platform>``), with the library alone ``py3-none-<platform>``.
Without a C compiler (or without ``Python.h`` for the extension) the package
still installs and the core runs the numpy and onnxruntime paths (a warning
says so).  An editable install compiles both into the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("stream/_native/neighbours.c")
LIBRARY = Path("stream/_native/libanomstream_neighbours.so")
# No contraction of a multiply and an add into an FMA: each step must round as the graph's node (or np.interp)
# rounds it.  No errno from sqrt, so its loops vectorise (the square roots are IEEE's either way).
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", "-fno-math-errno"]
EXTENSIONS = {  # module name: (source, what runs without it)
    "_grading": (Path("stream/_native/grading.c"), "scores are graded in numpy"),
    "_decoding": (Path("stream/_native/decoding.c"), "events are decoded by the general path alone"),
    "_records": (Path("stream/_native/records.c"), "score records are encoded from dicts"),
}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _compile(cc: str, flags: list[str], source: Path, target: Path, without: str) -> bool:
    """Compile ``source`` into ``target`` (through a temporary file); False with a warning where it fails."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        done = subprocess.run([cc, *flags, "-o", str(tmp), str(source)], check=False, capture_output=True, text=True)
    except OSError as exc:
        done = subprocess.CompletedProcess([cc], 127, "", str(exc))
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        print(f"anomstream: {source.name} did not compile ({cc}), {without}:\n{done.stderr}", file=sys.stderr)
        return False
    tmp.replace(target)
    return True


def build(root: Path) -> Path | None:
    """Compile the library next to its source; its path, or None where no compiler could."""
    if sys.platform != "linux":
        return None
    cc = _compiler()
    without = "neighbour graphs will run whole"
    if cc is None:
        print(f"anomstream: no C compiler: {SOURCE} not built, {without}", file=sys.stderr)
        return None
    library = root / LIBRARY
    return library if _compile(cc, FLAGS, root / SOURCE, library, without) else None


def extension_path(name: str) -> Path:
    """Where the extension module ``name`` goes, relative to the root (this Python's suffix)."""
    return EXTENSIONS[name][0].with_name(name + str(sysconfig.get_config_var("EXT_SUFFIX")))


def build_extension(root: Path, name: str) -> Path | None:
    """Compile the extension module ``name`` next to its source; its path, or None where it could not be built."""
    if sys.platform != "linux" or sys.implementation.name != "cpython":
        return None
    source, without = EXTENSIONS[name]
    cc = _compiler()
    include = sysconfig.get_paths()["include"]
    if cc is None or not (Path(include) / "Python.h").is_file():
        what = "no C compiler" if cc is None else f"no Python.h in {include}"
        print(f"anomstream: {what}: {source} not built, {without}", file=sys.stderr)
        return None
    module = root / extension_path(name)
    return module if _compile(cc, [*FLAGS, f"-I{include}"], root / source, module, without) else None


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        library = build(root)
        modules = {name: build_extension(root, name) for name in EXTENSIONS}
        platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        if library is not None:
            build_data["force_include"][str(library)] = str(LIBRARY)
        for name, module in modules.items():
            if module is not None:
                build_data["force_include"][str(module)] = str(extension_path(name))
        if any(m is not None for m in modules.values()):
            # An extension module: this CPython's ABI only.
            abi = f"cp{sys.version_info.major}{sys.version_info.minor}"
            abi += "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
            build_data["pure_python"] = False
            build_data["tag"] = f"{abi}-{abi}-{platform}"
        elif library is not None:
            # Plain C loaded with ctypes: any Python 3, this platform only.
            build_data["pure_python"] = False
            build_data["tag"] = "py3-none-" + platform
