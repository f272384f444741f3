"""Refuse a virtual environment that drifted from constraints.txt (the lock file).

`make` installs into .venv once and then trusts a stamp file; a package upgraded by hand afterwards (a newer black
reformats the Snakefiles differently, a newer pandas changes a table) would make this machine disagree with a fresh
clone. Run by scripts/setup_venv.sh and by every `make` target that uses the venv: it lists each pinned package
whose installed version differs and exits 1, naming the command that repairs it.
"""

import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return out


def main() -> int:
    lock = Path(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = [f"{name} {installed[name]} (pinned {version})" for name, version in sorted(pins(lock).items())
             if name in installed and installed[name] != version]
    if drift:
        print(f"error: {sys.prefix} differs from {lock}: " + ", ".join(drift), file=sys.stderr)
        print(f"repair: {sys.executable} -m pip install -c {lock} -e '.[dev,cpu]' ('.[dev,gpu]' on CUDA machines)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
