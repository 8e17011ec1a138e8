#!/bin/sh
# Entry point of the `dev` image (Dockerfile target used by `tilt up -- --live`):
# runs "$@" and restarts it whenever its binary ($1) is replaced, which is what
# Tilt's live_update does after compiling a synced source change in the pod.
# When the program exits on its own, so does this script (Kubernetes restarts
# the container as usual).
set -u
bin=$1
stamp() { stat -c '%i %Y %s' "$bin" 2>/dev/null || echo missing; }
child=
trap 'if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; wait "$child"; fi; exit 143' TERM INT
while :; do
  started=$(stamp)
  "$@" &
  child=$!
  changed=0
  while kill -0 "$child" 2>/dev/null; do
    sleep 1
    if [ "$(stamp)" != "$started" ]; then changed=1; break; fi
  done
  if [ "$changed" = 1 ]; then
    echo "dev-supervisor: $bin was rebuilt; restarting it" >&2
    kill -TERM "$child" 2>/dev/null
    wait "$child"
    continue
  fi
  wait "$child"
  exit $?
done
