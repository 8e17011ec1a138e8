#!/usr/bin/env bash
# Offline checks of the deployment side of swapstats: Helm chart (lint, render,
# Kubernetes schemas, invariants, values schema), k8s/ dev stack, docker
# compose, Tiltfile and Dockerfile. No cluster and no Docker engine needed.
#
#   bash scripts/check-deploy.sh
#
# Environment:
#   SWAPSTATS_BIN   binary whose `config` subcommand judges every container's
#                   environment (default: target/debug/swapstats; those checks
#                   are SKIPPED, loudly, when it is missing)
#   PYTHON          interpreter to use (default: python3, 3.11+)
#   DEPLOY_CHECKS_VENV  where the Python packages go (default:
#                   target/deploy-checks/venv; "none" = the current interpreter)
#
# Prints one PASS/FAIL/SKIP line per check and ends with
# `deploy checks: N passed, M failed`; exits non-zero when anything failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
req=scripts/deploy_checks/requirements.txt
venv=${DEPLOY_CHECKS_VENV:-$root/target/deploy-checks/venv}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [ "$venv" != none ]; then
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    if ! "$py" -m venv "$venv" >"$log" 2>&1; then
      echo "note: could not create a virtualenv at $venv (python3-venv missing?); installing into $py instead" >&2
      rm -rf "$venv"
      venv=none
    fi
  fi
  [ "$venv" != none ] && py="$venv/bin/python"
fi

# Install the checks' packages once per requirements file.
stamp="$venv/.deploy-checks-installed"   # only used with a virtualenv
want=$(cat "$req" <("$py" --version 2>&1) | sha256sum | cut -d' ' -f1)
if [ "$venv" = none ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing the checks' Python packages ($req) ..."
  if ! "$py" -m pip install --quiet --disable-pip-version-check --ignore-requires-python -r "$req" >"$log" 2>&1; then
    cat "$log" >&2
    echo "deploy checks: 0 passed, 1 failed (pip install -r $req failed)"
    exit 1
  fi
  [ "$venv" != none ] && echo "$want" >"$stamp"
fi

cd "$root/scripts"
export SWAPSTATS_BIN=${SWAPSTATS_BIN:-$root/target/debug/swapstats}
exec "$py" -m deploy_checks --root "$root"
