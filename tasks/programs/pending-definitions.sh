#!/usr/bin/env bash
# pending-definitions PROJECT   (part of deploy, rollback and status: commands/definitions.py)
# Reads `SERVICE HASH` lines (`docker compose config --hash`, run in a release) on stdin and
# prints `@@pending SERVICE` for each service whose running container was created from another
# definition: its `com.docker.compose.config-hash` label differs. A service with no running
# container is not pending (the next deploy creates it with the release's definition).
set -uo pipefail
project=$1
while read -r service hash; do
  [ -n "${hash:-}" ] || continue
  cid=$(docker ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$service" \
    --filter label=com.docker.compose.oneoff=False | head -n 1)
  [ -n "$cid" ] || continue
  have=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.config-hash"}}' "$cid") \
    || continue
  [ "$have" = "$hash" ] || echo "@@pending $service"
done
exit 0
