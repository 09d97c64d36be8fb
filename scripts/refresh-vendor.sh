#!/usr/bin/env bash
# Refresh streamlit_client/vendor/: the markdown renderer and the sanitiser the chat page's
# listener uses to draw replies while they stream (see streamlit_client/vendor/README.md).
#
#   scripts/refresh-vendor.sh            # the pinned versions below
#   MARKED=18.3.0 DOMPURIFY=3.5.0 scripts/refresh-vendor.sh
#
# It fetches each package with `npm pack` (the registry's tarball, checked against its
# integrity by npm) into a temporary directory, copies the browser builds and the licence
# files, and prints the sha256 of everything it copied: put the new versions and hashes
# into vendor/README.md and the pins here. Nothing is built, then or at install time:
# the files are shipped as package data and streamlit_client/component.py reads them.
set -euo pipefail

MARKED="${MARKED:-18.3.0}"
DOMPURIFY="${DOMPURIFY:-3.5.0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/streamlit_client/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

fetch() { # package version -> unpacked package directory
  local name="$1" version="$2"
  (cd "$WORK" && npm pack --silent "$name@$version" >/dev/null)
  mkdir -p "$WORK/$name"
  tar -xzf "$WORK/$name-$version.tgz" -C "$WORK/$name"
  echo "$WORK/$name/package"
}

marked_dir="$(fetch marked "$MARKED")"
purify_dir="$(fetch dompurify "$DOMPURIFY")"

mkdir -p "$VENDOR"
cp "$marked_dir/lib/marked.umd.js" "$VENDOR/marked.umd.js"
cp "$marked_dir/LICENSE" "$VENDOR/LICENSE.marked"
cp "$purify_dir/dist/purify.min.js" "$VENDOR/purify.min.js"
cp "$purify_dir/LICENSE" "$VENDOR/LICENSE.dompurify"
cp "$purify_dir/LICENSE-MPL" "$VENDOR/LICENSE-MPL.dompurify"

echo "marked $MARKED    https://registry.npmjs.org/marked/-/marked-$MARKED.tgz"
echo "dompurify $DOMPURIFY https://registry.npmjs.org/dompurify/-/dompurify-$DOMPURIFY.tgz"
echo "sha256 of the tarballs:"
(cd "$WORK" && sha256sum "marked-$MARKED.tgz" "dompurify-$DOMPURIFY.tgz")
echo "sha256 of the vendored files:"
(cd "$VENDOR" && sha256sum marked.umd.js purify.min.js LICENSE.marked LICENSE.dompurify LICENSE-MPL.dompurify)
echo "sizes (bytes):"
(cd "$VENDOR" && wc -c marked.umd.js purify.min.js)
