#!/usr/bin/env bash
# Vendor onnxruntime-web's single-threaded-capable WebAssembly build into the report's assets,
# for the report's live probe (docs/probe.md). Installs the pinned npm package into a cache
# (npm checks the registry's integrity hash), checks the three files' sha256 and copies only them to
# python/sketchmine/present/report_assets/ort/ (git-ignored: the .wasm is 14 MB).
# Idempotent: does nothing when the files are already there with the right hashes.
set -euo pipefail
VERSION=1.30.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/python/sketchmine/present/report_assets/ort"
CACHE="${SKETCHMINE_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sketchmine/onnxruntime-web-$VERSION}"
SUMS="faece07e84faa9001f5104bbe4e5c70861d06cb2376a0dea1fa0ad33a67adc81  ort.wasm.min.js
e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b  ort-wasm-simd-threaded.mjs
3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2  ort-wasm-simd-threaded.wasm"

if [ -d "$DEST" ] && (cd "$DEST" && echo "$SUMS" | sha256sum --check --quiet --status 2>/dev/null); then
  echo "onnxruntime-web $VERSION already vendored in $DEST"; exit 0
fi
DIST="$CACHE/node_modules/onnxruntime-web/dist"
if [ ! -f "$DIST/ort-wasm-simd-threaded.wasm" ]; then
  command -v npm >/dev/null || { echo "npm is needed (node 20): apt-get install npm" >&2; exit 1; }
  mkdir -p "$CACHE"
  npm install --prefix "$CACHE" --no-save --no-audit --no-fund --ignore-scripts "onnxruntime-web@$VERSION" >&2
fi
(cd "$DIST" && echo "$SUMS" | sha256sum --check --quiet) || { echo "onnxruntime-web $VERSION: unexpected file hashes in $DIST" >&2; exit 1; }
mkdir -p "$DEST"
for f in ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm; do cp "$DIST/$f" "$DEST/$f"; done
cp "$CACHE/node_modules/onnxruntime-web/LICENSE" "$DEST/LICENSE" 2>/dev/null || true
echo "vendored onnxruntime-web $VERSION into $DEST ($(du -sb "$DEST" | cut -f1) bytes)"
