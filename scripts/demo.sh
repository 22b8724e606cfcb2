#!/usr/bin/env bash
# The demo: start the daemon on the embedded defaults (recd.toml's layout, run from the
# repository root), run every job in jobs/, print a few customers' recommendations read
# back over the socket with redis-cli, and stop the daemon cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

RECD=target/release/recd
SOCK=var/recd.sock
"$RECD" validate

"$RECD" serve &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  redis-cli -s "$SOCK" PING >/dev/null 2>&1 && break
  sleep 0.1
done

# Jobs with `after = [...]` start by themselves when their upstream publishes.
chained=()
for job in jobs/*.toml; do
  name=$(basename "$job" .toml)
  if grep -q '^after *=' "$job"; then chained+=("$name"); continue; fi
  echo "== recd run $name"
  "$RECD" run "$name"
done
for name in "${chained[@]}"; do
  echo "== waiting for $name (runs after its upstream job)"
  for _ in $(seq 300); do
    redis-cli -s "$SOCK" INFO | grep -q "^table_$name:" && break
    sleep 0.1
  done
done

describe() { # item id -> description, from the demo data's item list
  grep -m1 "^$1," data/demo/items.csv 2>/dev/null | cut -d, -f2- | sed 's/,[^,]*$//' | tr -d "\"" || true
}

# 12346 is a customer the model does not know (their only purchase was cancelled): the
# ranking table falls back to their cold-start list; a new customer gets the default.
for user in 17850 12347 13047 12346 new-customer; do
  echo
  echo "== redis-cli -s $SOCK ZREVRANGE ranking:$user 0 4 WITHSCORES"
  redis-cli -s "$SOCK" ZREVRANGE "ranking:$user" 0 4 WITHSCORES | paste - - | while IFS=$'\t' read -r item score; do
    printf '  %-8s %-10s %s\n' "$item" "$score" "$(describe "$item")"
  done
done
echo
echo "== redis-cli -s $SOCK ZREVRANGE diversity:17850 0 4 WITHSCORES   (ranking re-ranked for variety)"
redis-cli -s "$SOCK" ZREVRANGE diversity:17850 0 4 | while read -r item; do
  printf '  %-8s %s\n' "$item" "$(describe "$item")"
done
echo
echo "== redis-cli -s $SOCK ZREVRANGE bought-together:85123A 0 4   (on the same invoices as 85123A, by a SQL job)"
echo "   85123A: $(describe 85123A)"
redis-cli -s "$SOCK" ZREVRANGE bought-together:85123A 0 4 | while read -r item; do
  printf '  %-8s %s\n' "$item" "$(describe "$item")"
done
echo
echo "== redis-cli -s $SOCK GET ranking:17850"
redis-cli -s "$SOCK" GET ranking:17850
echo
echo "== redis-cli -s $SOCK HGETALL churn:17850   (churn probability, risk tier, features)"
redis-cli -s "$SOCK" HGETALL churn:17850 | paste - -
echo
echo "== redis-cli -s $SOCK ZREVRANGE churn-retention:high 0 4 WITHSCORES   (who to call first)"
redis-cli -s "$SOCK" ZREVRANGE churn-retention:high 0 4 WITHSCORES | paste - -
echo
"$RECD" status

kill -TERM $PID
wait $PID
trap - EXIT
echo "demo: daemon stopped cleanly"
