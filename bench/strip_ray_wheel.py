"""Rewrite a ray wheel without ray/jars, rllib, serve, llm and the dashboard UI (and their RECORD lines).

Tune + ASHA + OptunaSearch run from what is left (~44 MB instead of 79 MB), which fits the
64 MiB that travels to a lent GPU machine.

    python bench/strip_ray_wheel.py .gpu/wheels/ray-2.60.0-cp312-...whl
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

# The dashboard UI bundle too: sweeps start Ray with include_dashboard=False.
DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/build/")


def strip(wheel: Path) -> None:
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(DROP):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [line for line in data.decode().splitlines() if not line.startswith(DROP)]
                data = ("\n".join(kept) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        strip(Path(path))
        print(f"{path}: {Path(path).stat().st_size / 2**20:.0f} MiB")
