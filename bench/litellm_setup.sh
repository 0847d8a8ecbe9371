#!/usr/bin/env bash
# Install LiteLLM's proxy into its own venv (bench/.litellm-venv, gitignored) for `bench/run.py
# --compare litellm`. It never shares Palyra's venv: its pins would fight ours.
#
# The version is pinned on purpose. litellm 1.82.7 and 1.82.8 (March 2026) were malicious uploads
# (credential stealers; 1.82.8 added a `litellm_init.pth` that runs on every Python start); 1.107.0 is
# reported compromised too and no 1.107.x is on the index any more; releases from 1.81.16 to before
# 1.83.7 carry a proxy SQL injection (CVE-2026-42208). 1.108.7 is the newest release found whose [proxy]
# extra resolves from the package index used here: 1.108.10 and later pin litellm-proxy,
# litellm-proxy-extras or litellm-enterprise builds that are not on it. Move the pin only to a release you have checked. The
# script refuses a venv that holds any litellm*.pth file.
#
# Usage: bench/litellm_setup.sh            (PYTHON=python3.12 bench/litellm_setup.sh to choose Python)
set -euo pipefail

LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
PYTHON="${PYTHON:-python3}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.litellm-venv"

case "$LITELLM_VERSION" in
  1.82.7 | 1.82.8 | 1.107.0)
    echo "litellm_setup: $LITELLM_VERSION is a known-malicious release; refusing" >&2
    exit 2
    ;;
esac

check_pth() {
  local found
  found="$(find "$venv" -name 'litellm*.pth' -print 2>/dev/null || true)"
  if [ -n "$found" ]; then
    echo "litellm_setup: unexpected startup hook in the venv, remove $venv and investigate:" >&2
    echo "$found" >&2
    exit 3
  fi
}

if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -m venv "$venv"
fi
check_pth
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "litellm[proxy]==$LITELLM_VERSION"
check_pth

installed="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"
if [ "$installed" != "$LITELLM_VERSION" ]; then
  echo "litellm_setup: installed litellm $installed, expected $LITELLM_VERSION" >&2
  exit 1
fi
# The proxy's entry point must start without a network: the local cost map, no telemetry.
LITELLM_LOCAL_MODEL_COST_MAP=True "$venv/bin/litellm" --version >/dev/null
echo "litellm_setup: litellm[proxy]==$installed in $venv"
echo "litellm_setup: run the comparison with: make bench ARGS=\"--compare litellm\""
