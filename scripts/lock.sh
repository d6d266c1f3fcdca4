#!/usr/bin/env bash
# Rewrite constraints.txt: the newest versions that pyproject.toml's ranges allow, as a fresh install resolves them
# today (torch excepted: .ci/run pins it, as its CPU build is named per index). CI installs with `-c constraints.txt`;
# run `.ci/run` after this and commit the new file once it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q torch==2.13.0
"$scratch/venv/bin/python" -m pip install -q -e '.[test]'
{
    echo "# Exact versions the tests passed with (Python $("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())')); .ci/run installs with -c constraints.txt."
    echo "# Regenerate with scripts/lock.sh, then run .ci/run. torch is pinned in .ci/run."
    "$scratch/venv/bin/python" -m pip freeze --all --exclude-editable | grep -v -e '^torch==' -e '^pip=='
} > "$scratch/constraints.txt"
mv "$scratch/constraints.txt" constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) pins)"
