#!/usr/bin/env bash
# The one test command: installs what the tests need (redis-server, Python
# packages for the deploy checks), then runs the Rust tests and the deploy checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  echo "== installing redis-server"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
# The Debian package starts a system Redis on 6379; tests start their own servers.
(service redis-server stop >/dev/null 2>&1 || true)

echo "== cargo test"
cargo build --quiet --bins
cargo test --quiet --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

if [ -f scripts/check-deploy.sh ]; then
  echo "== deploy checks"
  SWAPSTATS_BIN="$PWD/target/debug/swapstats" bash scripts/check-deploy.sh
fi
