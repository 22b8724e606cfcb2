#!/usr/bin/env bash
# Moves the debug info of the release binary and the plugins into files of their own:
# `target/release/recd` drops from ~140 MB to ~26 MB and each plugin to a fraction, while
# `recd.debug` (and `librecd_<name>.so.debug`) beside them keep the line tables. The
# stripped file names its debug file (.gnu_debuglink), so a panic's backtrace, gdb and
# addr2line still show file and line as long as the .debug file sits next to it.
# Idempotent: a file without debug info (already split) is left alone. Cargo keeps a split
# file as built; a rebuild of it links a full one again, which the next run of this splits.
set -euo pipefail
cd "$(dirname "$0")/.."

for f in target/release/recd target/release/librecd_*.so; do
  [ -f "$f" ] || continue
  readelf -S --wide "$f" 2>/dev/null | grep -q ' \.debug_info ' || continue
  objcopy --only-keep-debug "$f" "$f.debug"
  # In place (same inode): cargo's copy under target/release/deps stays in step.
  objcopy --strip-debug --add-gnu-debuglink="$f.debug" "$f"
done
