#!/usr/bin/env bash
# Builds the pinned local Kubernetes toolchain from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl  (k8s.io/kubernetes)
#   etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok), helm (helm.sh/helm/v3),
#   CoreDNS (github.com/coredns/coredns, for the live fleet's cluster DNS)
# and installs the Debian packages the local cluster runs (prometheus; iptables and iproute2 for
# the live fleet's network namespace) when they are missing.
# and copies data files they need from the module cache: kwok's stage configs and the Gateway
# API standard CRDs. Nothing built here is committed; output is cached by version and reused.
#
# Usage: testkit/toolchain/build.sh [--print-dir]
#   --print-dir   print the output directory and exit (builds nothing)
# Env:   MODELFLEET_TOOLCHAIN_DIR overrides the output directory; K8S_VERSION, ETCD_VERSION,
#        KWOK_VERSION, HELM_VERSION, GATEWAY_API_VERSION, COREDNS_VERSION, GAIE_VERSION override
#        the pins;
#        MODELFLEET_SKIP_APT=1 skips the Debian packages.
# The last line of stdout is the output directory.
set -euo pipefail

K8S=${K8S_VERSION:-v1.36.3}
ETCD=${ETCD_VERSION:-v3.6.10}
KWOK=${KWOK_VERSION:-v0.8.0}
HELM=${HELM_VERSION:-v3.22.0}
GWAPI=${GATEWAY_API_VERSION:-v1.3.0}
COREDNS=${COREDNS_VERSION:-v1.14.7}
# The Gateway API Inference Extension's InferencePool CRD: fetched into its own versioned
# directory, so pinning another version does not rebuild the Kubernetes binaries. v1.0.0 is the
# strictest v1 (one target port, endpointPickerRef required): what the operator writes must pass it.
GAIE=${GAIE_VERSION:-v1.0.0}

K8S_MINOR=$(echo "$K8S" | cut -d. -f2)
STAGING="v0.${K8S#v1.}"
OUT=${MODELFLEET_TOOLCHAIN_DIR:-$HOME/.cache/modelfleet/k8s/k8s-$K8S-etcd-$ETCD-kwok-$KWOK-helm-$HELM-gwapi-$GWAPI-coredns-$COREDNS}

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$OUT"
  exit 0
fi

START=$(date +%s)
log() { printf '[toolchain %4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- Debian packages: Prometheus, and iptables + iproute2 for the live fleet (kube-proxy) ---------
need_packages=()
command -v prometheus >/dev/null 2>&1 || need_packages+=(prometheus)
command -v iptables-restore >/dev/null 2>&1 || need_packages+=(iptables)
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
if [[ ${#need_packages[@]} -gt 0 && "${MODELFLEET_SKIP_APT:-0}" != 1 ]]; then
  SUDO=""; [[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
  log "installing Debian packages: ${need_packages[*]}"
  (
    flock 8
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_packages[@]}" >&2
  ) 8>"${TMPDIR:-/tmp}/modelfleet-apt.lock"
fi

command -v go >/dev/null || die "go is not installed (Go 1.26 is needed to build the pinned Kubernetes binaries)"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
mkdir -p "$OUT"

# One build at a time per output directory (tests and `modelfleet-e2e up` may race).
exec 9>"$OUT/.lock"
flock 9

GAIE_OUT="$OUT/inference-extension-crds-$GAIE"
if [[ ! -f "$GAIE_OUT/inference.networking.k8s.io_inferencepools.yaml" ]]; then
  command -v go >/dev/null || die "go is not installed (needed to fetch the Inference Extension CRD)"
  log "fetching the Gateway API Inference Extension $GAIE InferencePool CRD"
  GAIE_DIR=$(go mod download -json "sigs.k8s.io/gateway-api-inference-extension@$GAIE" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$GAIE_OUT.tmp"
  cp "$GAIE_DIR/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$GAIE_OUT.tmp/"
  chmod -R u+w "$GAIE_OUT.tmp"
  rm -rf "$GAIE_OUT"
  mv "$GAIE_OUT.tmp" "$GAIE_OUT"
fi
ln -sfn "inference-extension-crds-$GAIE" "$OUT/inference-extension-crds"

if [[ -f "$OUT/ready" ]]; then
  log "toolchain ready in $OUT"
  echo "$OUT"
  exit 0
fi

log "building toolchain into $OUT ($(go version | cut -d' ' -f3); GOPROXY=$(go env GOPROXY) GOSUMDB=$(go env GOSUMDB))"
log "pins: kubernetes $K8S, etcd $ETCD, kwok $KWOK, helm $HELM, gateway-api $GWAPI"

# `<binary> <version args>` must print the pinned version, never v0.0.0.
check_version() {
  local bin=$1 want=$2; shift 2
  local got
  got=$("$OUT/$bin" "$@" 2>&1 | head -3 | tr '\n' ' ')
  [[ "$got" == *"$want"* ]] || die "$bin reports '$got', expected $want"
  [[ "$got" != *"v0.0.0"* ]] || die "$bin reports '$got' (missing version ldflags)"
  log "ok: $bin -> $got"
}

mod_dir() { go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'; }

wrapper() { # a throwaway module for builds that `go install` cannot do
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/modelfleet-toolchain.XXXXXX")
  (cd "$dir" && go mod init "local.test/$1" >/dev/null 2>&1)
  echo "$dir"
}

# --- Kubernetes: a wrapper module whose replace lines come from the published go.mod ---------
if [[ ! -x "$OUT/kube-apiserver" || ! -x "$OUT/kubectl" || ! -x "$OUT/kube-proxy" || ! -x "$OUT/kube-scheduler" || ! -x "$OUT/kube-controller-manager" ]]; then
  W=$(wrapper k8s-bins)
  log "kubernetes $K8S: resolving modules (staging modules pinned to $STAGING)"
  GOMOD=$(cd "$W" && go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  mapfile -t staging < <(grep -E '^\s+k8s\.io/[A-Za-z0-9._-]+ v0\.0\.0(\s|$)' "$GOMOD" | awk '{print $1}' | sort -u)
  [[ ${#staging[@]} -gt 20 ]] || die "found only ${#staging[@]} staging modules in $GOMOD"
  for m in "${staging[@]}"; do (cd "$W" && go mod edit -replace="$m=$m@$STAGING"); done
  (cd "$W" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$K8S" "k8s.io/kubernetes/cmd/kube-proxy@$K8S" "k8s.io/kubernetes/cmd/kubectl@$K8S" >&2)
  LDF="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDF="$LDF -X $pkg.gitVersion=$K8S -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
  done
  log "kubernetes $K8S: compiling kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl (the long step: 15-25 min cold on 2 cores)"
  (cd "$W" && go build -ldflags "$LDF" -o "$OUT/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$W"
fi
check_version kube-apiserver "$K8S" --version
check_version kube-controller-manager "$K8S" --version
check_version kube-scheduler "$K8S" --version
check_version kube-proxy "$K8S" --version
check_version kubectl "$K8S" version --client

# --- etcd: its server module has relative replaces, so build through a wrapper ---------------
if [[ ! -x "$OUT/etcd" ]]; then
  W=$(wrapper etcd-bin)
  log "etcd $ETCD: compiling"
  (cd "$W" && go get "go.etcd.io/etcd/server/v3@$ETCD" >&2 && go build -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$W"
fi
check_version etcd "${ETCD#v}" --version

# --- kwok ----------------------------------------------------------------------------------------
if [[ ! -x "$OUT/kwok" ]]; then
  log "kwok $KWOK: compiling"
  GOBIN="$OUT" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK"
fi
check_version kwok "${KWOK#v}" --version

# --- helm ----------------------------------------------------------------------------------------
if [[ ! -x "$OUT/helm" ]]; then
  log "helm $HELM: compiling"
  W=$(wrapper helm-bin)
  (cd "$W" && go get "helm.sh/helm/v3/cmd/helm@$HELM" >&2 && \
    go build -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM" -o "$OUT/helm" helm.sh/helm/v3/cmd/helm)
  rm -rf "$W"
fi
check_version helm "$HELM" version --short

# --- CoreDNS (its default plugin set includes `kubernetes`) ------------------------------------
if [[ ! -x "$OUT/coredns" ]]; then
  log "coredns $COREDNS: compiling"
  GOBIN="$OUT" go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS"
fi
check_version coredns "${COREDNS#v}" -version

# --- data from the module cache: kwok stages and Gateway API CRDs --------------------------------
KWOK_DIR=$(mod_dir "sigs.k8s.io/kwok@$KWOK")
mkdir -p "$OUT/kwok-stages"
for stage in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  cp "$KWOK_DIR/kustomize/stage/$stage" "$OUT/kwok-stages/$(basename "$stage")"
done
GWAPI_DIR=$(mod_dir "sigs.k8s.io/gateway-api@$GWAPI")
mkdir -p "$OUT/gateway-api-crds"
cp "$GWAPI_DIR"/config/crd/standard/*.yaml "$OUT/gateway-api-crds/"
chmod -R u+w "$OUT/kwok-stages" "$OUT/gateway-api-crds"
log "copied $(ls "$OUT/kwok-stages" | wc -l) kwok stages and $(ls "$OUT/gateway-api-crds" | wc -l) Gateway API CRDs"

cat > "$OUT/versions.env" <<VERSIONS
K8S_VERSION=$K8S
ETCD_VERSION=$ETCD
KWOK_VERSION=$KWOK
HELM_VERSION=$HELM
GATEWAY_API_VERSION=$GWAPI
COREDNS_VERSION=$COREDNS
VERSIONS
touch "$OUT/ready"
log "toolchain ready in $OUT"
echo "$OUT"
