#!/bin/sh
# mutmut over the server's signature code (docs/mutation.md), in a throwaway copy of the tree:
# [tool.mutmut] in pyproject.toml holds the core's configuration, so this copy gets its own.
# Usage, from the repository root: sh tests/mutations/mutmut_server.sh [path/to/mutmut]
set -eu
MUTMUT=${1:-mutmut}
ROOT=$(pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$WORK")
cd "$WORK"
python3 - <<'PY'
import re
text = open("pyproject.toml").read()
config = '''[tool.mutmut]
source_paths = ["server/"]
only_mutate = ["server/signature.py"]
also_copy = ["config.json", "sansio/", "peers/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-o", "addopts="]
pytest_add_cli_args_test_selection = ["tests/server/test_security.py"]
'''
text = re.sub(r"\[tool\.mutmut\]\n(?:(?!\n\[).)*", config, text, flags=re.S)
open("pyproject.toml", "w").write(text)
PY
"$MUTMUT" run >mutmut.log 2>&1 || { tail -40 mutmut.log; exit 1; }
tail -c 200 mutmut.log | tr '\r' '\n' | tail -2
"$MUTMUT" results
