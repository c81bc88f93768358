#!/bin/sh
# mutmut over the server's security and limits code (docs/mutation.md), in a throwaway copy of
# the tree: [tool.mutmut] in pyproject.toml holds the core's configuration, so this copy gets
# its own. Mutated: server/signature.py and server/ws.py whole, and the functions below of
# http.py, app.py, call.py, twilio_leg.py and agent_leg.py (the rest of those modules is not
# security or limits code, and their other tests are too slow for a run per mutant).
# Usage, from the repository root:
#   sh tests/mutations/mutmut_server.sh [path/to/mutmut [mutant-name-glob ...]]
# e.g. `... /work/venv/bin/mutmut "server.signature.*"` runs signature.py's mutants only.
set -eu
MUTMUT=${1:-mutmut}
[ $# -gt 0 ] && shift
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
only_mutate = ["server/signature.py", "server/ws.py", "server/http.py", "server/app.py",
               "server/call.py", "server/twilio_leg.py", "server/agent_leg.py"]
also_copy = ["config.json", "sansio/", "peers/", "examples/"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-o", "addopts=",
    "--deselect", "tests/server/test_lifecycle.py::test_two_workers_serve_calls_and_sigterm_to_the_parent_drains_both"]
pytest_add_cli_args_test_selection = [
    "tests/server/test_security.py",
    "tests/server/test_signature.py",
    "tests/server/test_http.py",
    "tests/server/test_ws.py",
    "tests/server/test_ws_limits.py",
    "tests/server/test_limits_exact.py",
    "tests/server/test_lifecycle.py",
    "tests/server/test_calls.py::test_caller_not_reading_ends_its_call_within_the_write_cap",
    "tests/server/test_calls.py::test_agent_not_reading_ends_its_call_within_the_write_cap",
]
'''
text = re.sub(r"\[tool\.mutmut\]\n(?:(?!\n\[).)*", config, text, flags=re.S)
open("pyproject.toml", "w").write(text)
PY
# The mutants run (unless named): every one of signature.py and ws.py, and those of the
# limits functions.
[ $# -gt 0 ] || set -- "server.signature.*" "server.ws.*" \
    "server.http.xǁHttpProtocolǁ_process__*" \
    "server.http.xǁHttpProtocolǁ_arm_request_timer__*" \
    "server.http.xǁHttpProtocolǁ_on_request_timeout__*" \
    "server.http.xǁHttpProtocolǁ_refused_for_capacity__*" \
    "server.http.xǁHttpProtocolǁclose__*" \
    "server.http.xǁHttpProtocolǁ__init____*" \
    "server.app.xǁServerǁat_capacity__*" \
    "server.call.xǁCallDriverǁ_flush_twilio__*" \
    "server.call.xǁCallDriverǁ_send_agent_audio__*" \
    "server.call.xǁCallDriverǁ_send_agent_text__*" \
    "server.call.xǁCallDriverǁ_agent_not_reading__*" \
    "server.twilio_leg.xǁTwilioLegǁflush__*"
"$MUTMUT" run "$@" >mutmut.log 2>&1 || { tail -40 mutmut.log; exit 1; }
tail -c 200 mutmut.log | tr '\r' '\n' | tail -2
# the tally, then the survivors (mutants outside the run are "not checked")
"$MUTMUT" results --all true | grep -v ': not checked$' | sed 's/.*: //' | sort | uniq -c
"$MUTMUT" results | grep -v ': not checked$' || true
