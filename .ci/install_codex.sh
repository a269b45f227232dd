#!/usr/bin/env bash
# Install the pinned real Codex CLI (npm package @openai/codex) into a cache folder
# for the real-Codex integration tests (tests/test_real_codex.py).
#
# - Idempotent: a finished install is detected and reused (CI caches the folder).
# - Atomic: npm installs into a temporary sibling folder that is renamed into place
#   only after the binary answered `--version`, so a half install is never used.
# - Never fails CI: when npm or the registry is unavailable it prints why on stderr
#   and exits 0, and the real-Codex tests skip themselves with a clear reason.
# - Prints the path of the native codex binary on stdout (last line), or nothing
#   when the install did not succeed.
#
# Env: FLYWHEEL_CI_CACHE (default ~/.cache/flywheel-ci), FLYWHEEL_CODEX_NPM_VERSION
# (default the pinned 0.169.0; the product's pinned version, supervisor/provision.py).
set -u

VERSION="${FLYWHEEL_CODEX_NPM_VERSION:-0.169.0}"
CACHE="${FLYWHEEL_CI_CACHE:-$HOME/.cache/flywheel-ci}"
DEST="$CACHE/codex-$VERSION"

say() { printf 'install_codex: %s\n' "$*" >&2; }

# The npm wrapper bin/codex.js only locates and execs a native binary shipped in a
# per-platform package; the tests use the native binary directly so that signals
# and process groups reach Codex itself, not a node wrapper.
find_native() {
    local root="$1" arch triple
    arch="$(uname -m 2>/dev/null)"
    case "$arch" in
        x86_64|amd64) triple="x86_64-unknown-linux-musl" ;;
        aarch64|arm64) triple="aarch64-unknown-linux-musl" ;;
        *) return 1 ;;
    esac
    local candidate
    # 0.169.0 layout: node_modules/@openai/codex-linux-<arch>/vendor/<triple>/bin/codex,
    # next to codex-resources/ (bwrap) and codex-path/ (rg), which the binary finds
    # from its own real path, so a symlink to it works.
    for candidate in \
        "$root"/node_modules/@openai/codex-linux-*/vendor/"$triple"/bin/codex \
        "$root"/node_modules/@openai/codex/node_modules/@openai/codex-linux-*/vendor/"$triple"/bin/codex \
        "$root"/node_modules/@openai/codex/vendor/"$triple"/bin/codex \
        "$root"/node_modules/@openai/codex/vendor/"$triple"/codex/codex; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    # Layouts change between releases: fall back to any executable named codex
    # under a vendor folder.
    candidate="$(find "$root/node_modules" -path '*/vendor/*' -type f -name codex -perm -u+x 2>/dev/null | head -n 1)"
    if [ -n "$candidate" ]; then
        printf '%s\n' "$candidate"
        return 0
    fi
    return 1
}

# A cached install is good when its binary runs and reports the pinned version.
check_install() {
    local root="$1" bin out
    bin="$(find_native "$root")" || return 1
    out="$("$bin" --version 2>/dev/null)" || return 1
    case "$out" in
        *"$VERSION"*) printf '%s\n' "$bin"; return 0 ;;
        *) return 1 ;;
    esac
}

if bin="$(check_install "$DEST")"; then
    say "codex $VERSION already installed (cached)"
    ln -sfn "$bin" "$DEST/codex"
    printf '%s\n' "$DEST/codex"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    say "npm not found on PATH; cannot install @openai/codex@$VERSION — real-Codex tests will be skipped"
    exit 0
fi

if ! mkdir -p "$CACHE"; then
    say "cannot create cache folder $CACHE — real-Codex tests will be skipped"
    exit 0
fi

TMP="$(mktemp -d "$CACHE/.codex-$VERSION.XXXXXX")" || {
    say "cannot create a temporary folder in $CACHE — real-Codex tests will be skipped"
    exit 0
}
trap 'rm -rf "$TMP"' EXIT

say "installing @openai/codex@$VERSION with npm into $DEST (about 400 MB unpacked)"
start=$(date +%s)
# --prefix keeps it out of the global node folder; no scripts are needed (the native
# binary arrives as an optional dependency tarball).
# Bounded retries and an overall limit: a registry that is down costs CI under a
# minute, not npm's default minutes of backoff.
limit=""
command -v timeout >/dev/null 2>&1 && limit="timeout 900"
if ! $limit npm install --prefix "$TMP" --no-audit --no-fund --no-save --ignore-scripts \
        --fetch-retries=2 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=10000 \
        --loglevel=error "@openai/codex@$VERSION" >&2; then
    say "npm install @openai/codex@$VERSION failed (registry unreachable?) — real-Codex tests will be skipped"
    exit 0
fi

if ! bin="$(check_install "$TMP")"; then
    say "npm installed @openai/codex@$VERSION but no working native codex $VERSION binary was found for $(uname -m) — real-Codex tests will be skipped"
    exit 0
fi

# Rename into place; another job may have won the race, which is fine.
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
if ! mv "$TMP" "$DEST"; then
    say "could not move the install into $DEST — real-Codex tests will be skipped"
    exit 0
fi
trap - EXIT
rm -rf "$DEST.old"

bin="$(find_native "$DEST")" || { say "binary vanished after the move"; exit 0; }
ln -sfn "$bin" "$DEST/codex"
say "installed in $(( $(date +%s) - start )) s; $(du -sh "$DEST" 2>/dev/null | cut -f1) on disk"
printf '%s\n' "$DEST/codex"
exit 0
