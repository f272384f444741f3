#!/usr/bin/env bash
# Create .venv-official: the official SpidR code (the `spidr` package from PyPI) for side-by-side benchmarks.
#
# Its import name is `spidr`, like ours, so it lives in its own venv. That venv reuses the torch and numpy of the
# project venv (a .pth file pointing at its site-packages, whose own .pth files, ours included, are not
# processed), so both codes run on the very same torch build. Usage: benchmarks/setup_official.sh [BASE_VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-.venv}
version=${SPIDR_OFFICIAL_VERSION:-0.2.0}
"$base/bin/python" -m venv --without-pip .venv-official
site_base=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site_off=$(.venv-official/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site_base" > "$site_off/_project_venv_torch.pth"
"$base/bin/pip" --python .venv-official/bin/python install --quiet --no-deps "spidr==$version"
cd /tmp && "$OLDPWD/.venv-official/bin/python" -c \
    'import spidr, torch; print("official spidr at", spidr.__file__, "torch", torch.__version__)'
