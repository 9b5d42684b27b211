#!/bin/bash
# Refresh the web page's vendored libraries from npm, at the versions pinned in
# web/package-lock.json (integrity-checked by npm ci), into src/corral/api/static/vendor.
# The vendored files are committed, so `make test` needs neither npm nor the network.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp web/package.json web/package-lock.json "$work/"
npm ci --prefix "$work" --no-audit --no-fund --silent
m="$work/node_modules"
out=src/corral/api/static/vendor
mkdir -p "$out"
cp "$m/@xterm/xterm/lib/xterm.js" "$m/@xterm/xterm/css/xterm.css" "$m/@xterm/addon-fit/lib/addon-fit.js" \
   "$m/uplot/dist/uPlot.iife.min.js" "$m/uplot/dist/uPlot.min.css" "$out/"
cp "$m/@xterm/xterm/LICENSE" "$out/LICENSE.xterm"
cp "$m/uplot/LICENSE" "$out/LICENSE.uplot"
sed -i 's|//# sourceMappingURL=.*||' "$out"/*.js  # the maps are not shipped
{
  echo "Vendored by scripts/vendor-web.sh from npm (web/package-lock.json):"
  for p in @xterm/xterm @xterm/addon-fit uplot; do
    echo "$p $(node -p "require('$m/$p/package.json').version") $(node -p "require('$m/$p/package.json').license")"
  done
} > "$out/VERSIONS"
echo "vendored into $out:"; cat "$out/VERSIONS"
