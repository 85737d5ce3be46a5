"""Build hook: compiles the neighbour search (stream/_native/neighbours.c) into the package.

The library is plain C loaded with ctypes (``stream/native.py``), so it does
not depend on the Python version.  Without a C compiler the package still
installs and the core runs the neighbour graphs whole (a warning says so).
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
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"]


def build(root: Path) -> Path | None:
    """Compile the library next to its source; its path, or None where no compiler could."""
    source, library = root / SOURCE, root / LIBRARY
    if sys.platform != "linux":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print(f"anomstream: no C compiler: {SOURCE} not built, neighbour graphs will run whole", file=sys.stderr)
        return None
    tmp = library.with_suffix(".so.tmp")
    try:
        done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(source)], check=False, capture_output=True, text=True)
    except OSError as exc:
        done = subprocess.CompletedProcess([cc], 127, "", str(exc))
    if done.returncode != 0:
        print(f"anomstream: {SOURCE} did not compile ({cc}), neighbour graphs will run whole:\n{done.stderr}",
              file=sys.stderr)
        return None
    tmp.replace(library)
    return library


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        library = build(Path(self.root))
        if library is not None:
            build_data["pure_python"] = False
            # Plain C loaded with ctypes: any Python 3, this platform only.
            build_data["tag"] = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")
            build_data["force_include"][str(library)] = str(LIBRARY)
