#!/usr/bin/env bash
# Builds recd_<version>_<arch>.deb from the release build (`make deb` runs scripts/setup.sh
# first, which builds and strips it) with Debian's own dpkg-deb: no packaging tool to
# compile, and the archive is what dpkg-buildpackage would make of the same tree.
#
# Layout (see docs/operations.md, "Debian package"):
#   /usr/bin/recd                                  the daemon and CLI
#   /usr/lib/recd/plugins/librecd_<name>.so        the shipped strategies
#   /usr/lib/recd/libonnxruntime.so.1.31.1         ONNX Runtime (CPU) from PyPI's wheel
#   /etc/recd/recd.toml, /etc/recd/jobs/*.toml     config and the demo jobs (conffiles)
#   /usr/share/recd/demo/                          the demo data and models the jobs read
#   /usr/share/recd/scripts/train_ranking.py       the trainer `recd init` runs
#   /lib/systemd/system/recd.service               the Type=notify unit
#   /usr/share/doc/recd/                           README, docs, copyright
# /var/lib/recd, the store, is the recd user's: postinst makes it (and systemd's
# StateDirectory), so an upgrade's unpack never resets its owner.
#
# Usage: scripts/deb/build.sh [OUT_DIR]   (default target/deb); prints the package's path.
# DEB_COMPRESS=gzip|xz|zstd picks the compression (default xz).
set -euo pipefail
cd "$(dirname "$0")/../.."
# 0755 folders and 0644 files whatever the caller's umask (the plugin trust check refuses
# group-writable plugin folders).
umask 022

OUT="${1:-target/deb}"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
ORT=.deps/py/onnxruntime/capi/libonnxruntime.so.1.31.1
PLUGINS=(ranking cold_start diversity churn sql)

command -v dpkg-shlibdeps >/dev/null || { echo "deb: needs dpkg-shlibdeps: apt-get install dpkg-dev" >&2; exit 1; }
for f in target/release/recd "$ORT" "${PLUGINS[@]/#/target/release/librecd_}"; do
  case "$f" in target/release/librecd_*) f="$f.so" ;; esac
  [ -f "$f" ] || { echo "deb: $f is missing: run scripts/setup.sh (make deb does)" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/recd_${VERSION}_${ARCH}"

# Binaries without debug info (the release build keeps it in *.debug files beside them).
install -D -m 0755 target/release/recd "$root/usr/bin/recd"
for p in "${PLUGINS[@]}"; do
  install -D -m 0644 "target/release/librecd_$p.so" "$root/usr/lib/recd/plugins/librecd_$p.so"
done
install -D -m 0644 "$ORT" "$root/usr/lib/recd/${ORT##*/}"
ln -s "${ORT##*/}" "$root/usr/lib/recd/libonnxruntime.so"
strip --strip-debug --remove-section=.gnu_debuglink "$root/usr/bin/recd" "$root"/usr/lib/recd/plugins/*.so

install -D -m 0644 scripts/deb/recd.toml "$root/etc/recd/recd.toml"
install -d -m 0755 "$root/etc/recd/jobs"
# Tracked files only: a local experiment in jobs/ must not ship as a conffile.
for job in $(git ls-files 'jobs/*.toml'); do
  # The shipped jobs read the demo files by path relative to the checkout: here, where
  # the package puts them.
  sed -e 's#"data/#"/usr/share/recd/demo/data/#g' -e 's#"models/#"/usr/share/recd/demo/models/#g' \
    "$job" > "$root/etc/recd/jobs/$(basename "$job")"
done
for f in data/demo/retail.parquet data/demo/items.csv data/demo/items.parquet data/demo/README.md \
  $(git ls-files models/ranking models/churn); do
  install -D -m 0644 "$f" "$root/usr/share/recd/demo/$f"
done
install -D -m 0644 scripts/train_ranking.py "$root/usr/share/recd/scripts/train_ranking.py"
install -D -m 0644 scripts/requirements-train.txt "$root/usr/share/recd/scripts/requirements-train.txt"
install -D -m 0644 scripts/deb/recd.service "$root/lib/systemd/system/recd.service"
install -D -m 0644 README.md "$root/usr/share/doc/recd/README.md"
for f in $(git ls-files 'docs/*.md' 'docs/images/*'); do install -D -m 0644 "$f" "$root/usr/share/doc/recd/${f#docs/}"; done
ort_py=$(dirname "$(dirname "$ORT")")
install -D -m 0644 "$ort_py/LICENSE" "$root/usr/share/doc/recd/onnxruntime/LICENSE"
install -D -m 0644 "$ort_py/ThirdPartyNotices.txt" "$root/usr/share/doc/recd/onnxruntime/ThirdPartyNotices.txt"
install -D -m 0644 plugin-api/include/recd_plugin.h "$root/usr/include/recd/recd_plugin.h"
cat > "$root/usr/share/doc/recd/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: recd

Files: *
Copyright: the recd authors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

Files: usr/lib/recd/libonnxruntime.so*
Copyright: Microsoft Corporation
License: MIT
 ONNX Runtime ${ORT##*.so.}, from the onnxruntime wheel on PyPI. Its licence and
 third-party notices are in /usr/share/doc/recd/onnxruntime/.

Files: usr/share/recd/demo/data/*
Copyright: Daqing Chen, UCI Machine Learning Repository
License: CC-BY-4.0
 A derived copy of UCI Online Retail (https://doi.org/10.24432/C5BW33); see
 /usr/share/recd/demo/data/demo/README.md for what was changed.
COPYRIGHT

# Depends: what dpkg-shlibdeps finds the binaries need (libc6, libgcc-s1, and libstdc++6
# for ONNX Runtime), deb-systemd-helper for the maintainer scripts, useradd.
mkdir -p "$stage/debian"
printf 'Source: recd\n\nPackage: recd\nArchitecture: any\n' > "$stage/debian/control"
shlibs=$(cd "$stage" && dpkg-shlibdeps -O "$root/usr/bin/recd" "$root/usr/lib/recd/${ORT##*/}" \
  "$root"/usr/lib/recd/plugins/*.so 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: recd
Version: $VERSION
Architecture: $ARCH
Maintainer: recd maintainers <recd@localhost>
Section: misc
Priority: optional
Depends: $shlibs, init-system-helpers, passwd
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Description: precomputed recommendations served over the Redis protocol
 recd runs recommendation strategies (plugins) on cron schedules, scores ONNX models,
 and publishes the resulting lists into an embedded store that local apps read over a
 Unix socket with any Redis client.
CONTROL
(cd "$root" && find etc -type f | sort | sed 's#^#/#') > "$root/DEBIAN/conffiles"
install -m 0755 scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$root/DEBIAN/md5sums"

mkdir -p "$OUT"
deb="$OUT/recd_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$root" "$deb" >/dev/null
echo "$deb"
