#!/usr/bin/env bash
# Build (or reuse) and run the real Kubernetes control plane on loopback.
#
#   scripts/k8s-control-plane.sh build   build etcd, kube-apiserver, kube-controller-manager and
#                                        kube-scheduler, or reuse the cached ones; the LAST line
#                                        of stdout is the folder holding the four binaries
#   scripts/k8s-control-plane.sh up      build or reuse, then start etcd, the three components
#                                        and the node agent (tests/cluster) in the foreground,
#                                        print the kubeconfig path, stop everything on Ctrl-C
#   scripts/k8s-control-plane.sh path    print the cache folder (built or not) and exit
#
# The versions are pinned by the wrapper modules scripts/k8s/kubernetes/go.mod (k8s.io/kubernetes
# and every staging module at one release) and scripts/k8s/etcd/go.mod. Binaries are cached under
# ${SHIELDTUNE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shieldtune/k8s}/<kube>-etcd<etcd>/;
# a cached folder is reused only when every binary is there, reports the pinned version and was
# built from the same wrapper go.mod/go.sum (a stamp file), so a warm run costs seconds.
# Progress goes to stderr. Exit 2: no usable Go toolchain. GO names the go command (default go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_MOD="$ROOT/scripts/k8s/kubernetes"
ETCD_MOD="$ROOT/scripts/k8s/etcd"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "k8s-control-plane: $*" >&2; }

# The version a wrapper go.mod requires for a module (the go.mod is the single source of truth).
mod_version() {
  sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+(v[^[:space:]]+).*#\2#p" "$1/go.mod" \
    | head -n1
}

KUBE_VERSION="$(mod_version "$K8S_MOD" k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version "$ETCD_MOD" go.etcd.io/etcd/server/v3)"
CACHE_ROOT="${SHIELDTUNE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shieldtune/k8s}"
BIN_DIR="$CACHE_ROOT/${KUBE_VERSION}-etcd${ETCD_VERSION#v}"

# What the binaries were built from: a change to a wrapper module or to the build flags below
# invalidates the cache even when the version numbers stay the same.
BUILD_FLAGS_ID="cgo0 trimpath tags=selinux,notest,grpcnotrace ldflags=-s,-w"
stamp() {
  cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum" \
    | { sha256sum 2>/dev/null || shasum -a 256; } | cut -d' ' -f1
  echo "$BUILD_FLAGS_ID"
}

# True when $1 holds all four binaries at the pinned versions, built from these wrapper modules.
cache_ok() {
  local dir="$1" c
  [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$(stamp)" ] || return 1
  for c in "${COMPONENTS[@]}"; do
    [ -x "$dir/$c" ] || return 1
    [ "$("$dir/$c" --version 2>/dev/null)" = "Kubernetes $KUBE_VERSION" ] || return 1
  done
  [ -x "$dir/etcd" ] || return 1
  "$dir/etcd" --version 2>/dev/null | grep -qx "etcd Version: ${ETCD_VERSION#v}" || return 1
}

GO="${GO:-go}"
go() { command "$GO" "$@"; }

require_go() {
  if ! command -v "$GO" >/dev/null 2>&1; then
    echo "k8s-control-plane: the '$GO' command is missing: install Go 1.26 or newer" \
      "(the official Go toolchain, or your distribution's golang package) and rerun" >&2
    exit 2
  fi
  local v
  v="$(go env GOVERSION 2>/dev/null || true)"
  # Go >= 1.21 fetches the toolchain a go.mod asks for by itself (GOTOOLCHAIN=auto).
  if ! [[ "$v" =~ ^go1\.([0-9]+) ]] || [ "${BASH_REMATCH[1]}" -lt 21 ]; then
    echo "k8s-control-plane: Go '${v:-unknown}' is too old: install Go 1.26 or newer and rerun" >&2
    exit 2
  fi
}

# Release time of a module version, from the module cache's .info (reproducible buildDate).
release_time() {
  local info
  info="$(cd "$1" && go mod download -json "$2@$3" 2>/dev/null | sed -nE 's/.*"Info": "([^"]+)".*/\1/p')"
  [ -n "$info" ] && sed -nE 's/.*"Time":"([^"]+)".*/\1/p' "$info"
}

build_into() {
  local out="$1" t0 kube_date minor major ldflags
  major="${KUBE_VERSION#v}"
  major="${major%%.*}"
  minor="$(echo "$KUBE_VERSION" | cut -d. -f2)"
  # buildDate: SOURCE_DATE_EPOCH when set, else the release's own time, so builds are repeatable.
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    kube_date="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
  else
    kube_date="$(release_time "$K8S_MOD" k8s.io/kubernetes "$KUBE_VERSION" || true)"
    kube_date="${kube_date:-1970-01-01T00:00:00Z}"
  fi
  # As Kubernetes' hack/lib/version.sh: the same keys for component-base and client-go. The
  # module zip carries no git commit, so gitCommit stays unset; the tree is the released one.
  ldflags=""
  local key val pkg
  for kv in "gitVersion=$KUBE_VERSION" "gitMajor=$major" "gitMinor=$minor" \
    "gitTreeState=clean" "buildDate=$kube_date"; do
    key="${kv%%=*}"
    val="${kv#*=}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X '$pkg.$key=$val'"
    done
  done

  t0=$SECONDS
  log "building etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3) ..."
  (cd "$ETCD_MOD" && CGO_ENABLED=0 nice -n 10 go build -buildvcs=false -trimpath \
    -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=release-$ETCD_VERSION" \
    -o "$out/etcd" go.etcd.io/etcd/server/v3)
  log "etcd built in $((SECONDS - t0)) s"

  t0=$SECONDS
  log "building ${COMPONENTS[*]} $KUBE_VERSION (k8s.io/kubernetes; about 8-11 min cold on 2 cores) ..."
  (cd "$K8S_MOD" && CGO_ENABLED=0 nice -n 10 go build -buildvcs=false -trimpath \
    -tags selinux,notest,grpcnotrace -ldflags "all=$ldflags -s -w" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
  log "${COMPONENTS[*]} built in $((SECONDS - t0)) s"
}

cmd_build() {
  if [ -z "$KUBE_VERSION" ] || [ -z "$ETCD_VERSION" ]; then
    log "cannot read the pinned versions from $K8S_MOD/go.mod and $ETCD_MOD/go.mod"
    exit 1
  fi
  if cache_ok "$BIN_DIR"; then
    log "reusing $KUBE_VERSION + etcd $ETCD_VERSION"
    echo "$BIN_DIR"
    return
  fi
  require_go
  mkdir -p "$CACHE_ROOT"
  # One build at a time per cache (parallel test workers call this too); the others wait and
  # then find the finished folder.
  exec 9>"$CACHE_ROOT/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock 9
  fi
  if cache_ok "$BIN_DIR"; then
    log "reusing $KUBE_VERSION + etcd $ETCD_VERSION (built by a concurrent run)"
    echo "$BIN_DIR"
    return
  fi
  local tmp t0=$SECONDS
  tmp="$(mktemp -d "$CACHE_ROOT/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  build_into "$tmp"
  stamp >"$tmp/.stamp"
  if ! cache_ok "$tmp"; then
    log "the built binaries do not report $KUBE_VERSION / etcd $ETCD_VERSION:"
    "$tmp/kube-apiserver" --version >&2 || true
    "$tmp/etcd" --version >&2 || true
    exit 1
  fi
  rm -rf "$BIN_DIR"
  mv "$tmp" "$BIN_DIR"
  trap - EXIT
  log "built in $((SECONDS - t0)) s: $(du -sh "$BIN_DIR" | cut -f1) in $BIN_DIR"
  echo "$BIN_DIR"
}

cmd_up() {
  local bin py
  bin="$(cmd_build | tail -n1)"
  py="$ROOT/.venv/bin/python"
  [ -x "$py" ] || py="$(command -v python3)"
  cd "$ROOT"
  exec "$py" -m tests.cluster.control_plane --bin-dir "$bin" "$@"
}

case "${1:-}" in
  build) cmd_build ;;
  up) shift; cmd_up "$@" ;;
  path) echo "$BIN_DIR" ;;
  *)
    echo "usage: $0 build|up|path   (see the header of this script)" >&2
    exit 64
    ;;
esac
