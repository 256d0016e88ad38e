#!/bin/sh
# podman-compose.yml's source-db runs this from /docker-entrypoint-initdb.d on its first start (an empty data
# volume): it loads the demo data that the stack's seed service generated with pg-migrate's own generator
# (demo/generate-cli.ts) into the seed volume. Until this is done the server listens on its Unix socket only,
# so the coordinator cannot see a half-seeded source.
set -eu
deadline=$(( $(date +%s) + ${SEED_WAIT:-300} ))
echo "seed-source: waiting for /seed/demo.sql from the seed service"
until [ -s /seed/demo.sql ]; do
  if [ -e /seed/demo.sql ] && [ ! -r /seed/demo.sql ]; then
    echo "seed-source: /seed/demo.sql is there but not readable by $(id -un)" >&2
    exit 1
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "seed-source: /seed/demo.sql did not appear within ${SEED_WAIT:-300}s (did the seed service run?)" >&2
    exit 1
  fi
  sleep 1
done
psql -X -q -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres -f /seed/demo.sql
echo "seed-source: demo data loaded"
