#!/bin/sh
# install-cni.sh: installs the suite's plugins into the node's CNI bin dir and writes the
# suite's conflist into the CNI conf dir. The DaemonSet's init container runs it; any root
# shell can. Idempotent: identical files are left untouched (same inode, same mtime).
#
#   install-cni.sh [--force]
#
# Every file is written next to its destination under a hidden temp name and renamed into
# place, so a runtime never execs a half-copied plugin or reads a half-written config (libcni
# only loads *.conf, *.conflist and *.json, and the temp names are none of those).
#
# The rendered conflist is checked by the binaries that will read it before anything is
# installed: each of the suite's plugins it names runs `<plugin> --check-config <file>` (the
# validation its ADD runs first: CIDRs, prefix lengths, a pod range large enough, names). A
# refusal prints the plugin's own message and installs nothing: no binary, no conflist (the
# previous one stays). The shell only keeps values from breaking the JSON.
#
# A conflist of the same name that is not the suite's (it names neither kubenet-bridge nor
# vxlan-overlay) is another provider's: refused unless --force (or FORCE=1), which keeps it as
# <name>.replaced-by-cni-suite (a name runtimes do not load).
#
# Environment, [defaults]:
#   CNI_NETWORK          kubenet | vxlan-overlay | vxlan-overlay-kubernetes |
#                        kubenet-vpc-route                                          [kubenet]
#   POD_CIDR             the node's pod CIDR (kubenet, kubenet-vpc-route). When unset, it is
#                        read from the Node object $NODE_NAME through the in-cluster API (the
#                        pod's service account token; needs curl and RBAC "get nodes")
#   CLUSTER_CIDR         the cluster's pod range (vxlan-overlay, kubenet-vpc-route)
#   NON_MASQUERADE_CIDR  destinations never masqueraded          [CLUSTER_CIDR, else 10.0.0.0/8]
#   ETCD_ENDPOINTS       comma-separated etcd v3 URLs (vxlan-overlay)
#   METRICS_ADDRESS      where the agent serves /metrics and /healthz, IPv4:port or
#                        [IPv6]:port; "off" serves nothing (vxlan-overlay)   [127.0.0.1:9472]
#   CLUSTER_NAME         the cluster's name in route table tags (kubenet-vpc-route)
#   BRIDGE [cbr0]   MTU [0]   LOG_DIR [/var/log]   CNI_VERSION [1.0.0]
#   NETWORK_NAME [k8s-pod-network]
#   CNI_BIN_DIR          [/host/opt/cni/bin]
#   CNI_CONF_DIR         [/host/etc/cni/net.d]
#   CNI_CONF_NAME        [10-cni-suite.conflist]
#   SRC_BIN_DIR          the binaries to install            [<this script's dir>/bin]
#   TEMPLATE_DIR         the conflist templates             [<this script's dir>/conflists]
#   PLUGINS              installed when present in SRC_BIN_DIR
#                        [kubenet-bridge vxlan-overlay vpc-route]
#   SKIP_PLUGIN_CHECK=1  write the conflist even if a plugin it names is not in CNI_BIN_DIR,
#                        and without asking the suite's plugins to check it
#
# Exit status: 0 installed (or already up to date), 1 error, 3 refused a foreign conflist.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
FORCE=${FORCE:-0}
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install-cni: unknown argument $arg (see --help)" >&2; exit 1 ;;
    esac
done

CNI_NETWORK=${CNI_NETWORK:-kubenet}
CNI_BIN_DIR=${CNI_BIN_DIR:-/host/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/host/etc/cni/net.d}
CNI_CONF_NAME=${CNI_CONF_NAME:-10-cni-suite.conflist}
SRC_BIN_DIR=${SRC_BIN_DIR:-$HERE/bin}
TEMPLATE_DIR=${TEMPLATE_DIR:-$HERE/conflists}
PLUGINS=${PLUGINS:-kubenet-bridge vxlan-overlay vpc-route}
BRIDGE=${BRIDGE:-cbr0}
MTU=${MTU:-0}
LOG_DIR=${LOG_DIR:-/var/log}
CNI_VERSION=${CNI_VERSION:-1.0.0}
NETWORK_NAME=${NETWORK_NAME:-k8s-pod-network}
POD_CIDR=${POD_CIDR:-}
CLUSTER_CIDR=${CLUSTER_CIDR:-}
NON_MASQUERADE_CIDR=${NON_MASQUERADE_CIDR:-${CLUSTER_CIDR:-10.0.0.0/8}}
ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-}
# Loopback by default: the kubelet probes it from the node (the DaemonSet's probes name host
# 127.0.0.1), and the unauthenticated endpoint stays off the network unless asked for.
METRICS_ADDRESS=${METRICS_ADDRESS:-127.0.0.1:9472}
CLUSTER_NAME=${CLUSTER_NAME:-}

TMP_FILES=""
cleanup() { for f in $TMP_FILES; do rm -f "$f"; done; }
trap cleanup EXIT
trap 'exit 1' INT TERM

die() { echo "install-cni: $*" >&2; exit 1; }
say() { echo "install-cni: $*"; }

# Sets TMP to a new temp file beside $1 (same filesystem, so the rename is atomic), removed
# at exit unless renamed into place. Not called in $(...): the list must survive.
temp_beside() {
    TMP=$(mktemp "$(dirname "$1")/.$(basename "$1").tmp.XXXXXX") || die "cannot create a temp file beside $1"
    TMP_FILES="$TMP_FILES $TMP"
}

# install_file SRC DEST MODE: copy to a temp name beside DEST, then rename over it.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        say "$2 unchanged"
        return 0
    fi
    temp_beside "$2"
    cp "$1" "$TMP"
    chmod "$3" "$TMP"
    mv -f "$TMP" "$2"
    say "installed $2"
}

# Values end up inside JSON strings and sed expressions: allow only what CIDRs, URLs, names
# and paths need.
check_value() {
    case "$2" in
        *[!A-Za-z0-9./:_,@-]*) die "$1=\"$2\" has characters outside [A-Za-z0-9./:_,@-]" ;;
    esac
}

# host:port as the agent parses it (a socket address): a dotted IPv4 address with octets up
# to 255, or a bracketed IPv6 address, and a port 1-65535 (a probe cannot follow port 0).
is_socket_address() {
    port=${1##*:}
    host=${1%:*}
    case "$port" in ''|*[!0-9]*) return 1 ;; esac
    [ ${#port} -le 5 ] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || return 1
    case "$host" in
        \[*\]) echo "$host" | grep -Eq '^\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]$' ;;
        *) echo "$host" | grep -Eq '^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$' || return 1
           for octet in $(echo "$host" | tr . ' '); do [ "$octet" -le 255 ] || return 1; done ;;
    esac
}

# The node's spec.podCIDR from the API server, with the pod's service account.
pod_cidr_from_node() {
    sa=/var/run/secrets/kubernetes.io/serviceaccount
    [ -n "${NODE_NAME:-}" ] || return 1
    [ -r "$sa/token" ] && [ -n "${KUBERNETES_SERVICE_HOST:-}" ] || return 1
    command -v curl >/dev/null || die "POD_CIDR is unset and curl is missing to read it from node $NODE_NAME"
    body=$(curl -sS --fail --max-time 10 --cacert "$sa/ca.crt" \
        -H "Authorization: Bearer $(cat "$sa/token")" \
        "https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT:-443}/api/v1/nodes/${NODE_NAME}") \
        || die "cannot read node $NODE_NAME from the API server"
    if command -v jq >/dev/null; then
        echo "$body" | jq -r '.spec.podCIDR // empty'
    else
        echo "$body" | tr -d '\n' | sed -n 's/.*"podCIDR" *: *"\([^"]*\)".*/\1/p'
    fi
}

template="$TEMPLATE_DIR/$CNI_NETWORK.conflist.in"
[ -f "$template" ] || die "no template $template (CNI_NETWORK: kubenet, vxlan-overlay, vxlan-overlay-kubernetes, kubenet-vpc-route)"
mkdir -p "$CNI_BIN_DIR" "$CNI_CONF_DIR"

needed=$(grep -o '@@[A-Z_]*@@' "$template" | sort -u | tr -d @)
if echo "$needed" | grep -qx POD_CIDR && [ -z "$POD_CIDR" ]; then
    POD_CIDR=$(pod_cidr_from_node) || true
    [ -n "$POD_CIDR" ] || die "POD_CIDR is unset (set it, or run in a pod with NODE_NAME and a service account that may get nodes)"
    say "pod CIDR $POD_CIDR from node $NODE_NAME"
fi
ETCD_ENDPOINTS_JSON=""
if [ -n "$ETCD_ENDPOINTS" ]; then
    check_value ETCD_ENDPOINTS "$ETCD_ENDPOINTS"
    ETCD_ENDPOINTS_JSON=$(echo "$ETCD_ENDPOINTS" | sed -e 's/^/"/' -e 's/,/", "/g' -e 's/$/"/')
fi

sed_args=""
for var in $needed; do
    eval "value=\${$var:-}"
    if [ "$var" = METRICS_ADDRESS ] && [ "$value" = off ]; then
        # Optional: "off" drops the line (it is never the last member of its object).
        sed_args="$sed_args -e '/@@METRICS_ADDRESS@@/d'"
        continue
    fi
    # ETCD_ENDPOINTS_JSON is rendered from ETCD_ENDPOINTS: name what the operator sets.
    [ -n "$value" ] || die "$CNI_NETWORK needs ${var%_JSON}"
    case "$var" in
        ETCD_ENDPOINTS_JSON) ;;
        # Brackets of an IPv6 address are outside check_value's set; the pattern is stricter.
        METRICS_ADDRESS) is_socket_address "$value" || die "METRICS_ADDRESS=$value is not IPv4:port or [IPv6]:port with a port 1-65535 (or off)" ;;
        *) check_value "$var" "$value" ;;
    esac
    # CIDRs are the plugins' to judge (--check-config below); MTU is rendered unquoted, so it
    # must be a number to keep the JSON whole.
    case "$var" in
        MTU) case "$value" in ''|*[!0-9]*) die "MTU=$value is not a number" ;; esac ;;
    esac
    sed_args="$sed_args -e 's|@@$var@@|$value|g'"
done

# The binary that will serve plugin $1 once installed: the one this run installs, else the
# one already in CNI_BIN_DIR; nothing when neither exists.
plugin_binary() {
    for p in $PLUGINS; do
        if [ "$p" = "$1" ] && [ -f "$SRC_BIN_DIR/$1" ]; then
            echo "$SRC_BIN_DIR/$1"
            return 0
        fi
    done
    if [ -x "$CNI_BIN_DIR/$1" ]; then echo "$CNI_BIN_DIR/$1"; fi
}

# 1. The conflist, rendered to a temp file beside its destination (removed at exit unless
# renamed into place) and checked before anything is installed.
dest="$CNI_CONF_DIR/$CNI_CONF_NAME"
temp_beside "$dest"
rendered=$TMP
eval "sed $sed_args" <"$template" >"$rendered"
if command -v jq >/dev/null; then
    jq empty "$rendered" 2>/dev/null || die "rendered $template is not valid JSON"
fi
installable=0
for p in $PLUGINS; do
    if [ -f "$SRC_BIN_DIR/$p" ]; then installable=$((installable + 1)); fi
done
[ "$installable" -gt 0 ] || die "no plugin binary in $SRC_BIN_DIR"
if [ "${SKIP_PLUGIN_CHECK:-0}" != 1 ]; then
    for t in $(grep -o '"type" *: *"[^"]*"' "$rendered" | sed 's/.*"\([^"]*\)"$/\1/'); do
        bin=$(plugin_binary "$t")
        [ -n "$bin" ] || die "the conflist names plugin $t, which is not in $CNI_BIN_DIR (reference plugins: containernetworking-plugins; SKIP_PLUGIN_CHECK=1 writes it anyway)"
        case "$t" in
            kubenet-bridge|vxlan-overlay|vpc-route)
                refusal=$("$bin" --check-config "$rendered" 2>&1 >/dev/null) \
                    || die "$t refuses the rendered conflist, nothing installed: $refusal" ;;
        esac
    done
fi

# Another provider's conflist of the same name is refused before anything is installed.
foreign=0
if [ -e "$dest" ] && ! cmp -s "$rendered" "$dest" \
    && ! grep -Eq '"type"[[:space:]]*:[[:space:]]*"(kubenet-bridge|vxlan-overlay)"' "$dest"; then
    if [ "$FORCE" != 1 ]; then
        echo "install-cni: $dest exists and is not the suite's (another provider's?): refusing to overwrite it; --force (FORCE=1) replaces it and keeps it as $dest.replaced-by-cni-suite" >&2
        exit 3
    fi
    foreign=1
fi

# 2. Binaries.
for p in $PLUGINS; do
    if [ -f "$SRC_BIN_DIR/$p" ]; then
        install_file "$SRC_BIN_DIR/$p" "$CNI_BIN_DIR/$p" 0755
    else
        say "$p is not in $SRC_BIN_DIR: not installed"
    fi
done

# 3. The conflist, renamed into place.
if [ -f "$dest" ] && cmp -s "$rendered" "$dest"; then
    say "$dest unchanged"
else
    if [ "$foreign" = 1 ]; then
        cp -p "$dest" "$dest.replaced-by-cni-suite"
        say "kept the previous $dest as $dest.replaced-by-cni-suite"
    fi
    chmod 0644 "$rendered"
    mv -f "$rendered" "$dest"
    say "wrote $dest ($CNI_NETWORK)"
fi

# Runtimes use the first config by name (containerd's max_conf_num is 1).
first=$(ls "$CNI_CONF_DIR" | grep -E '\.(conf|conflist|json)$' | LC_ALL=C sort | head -n 1)
if [ -n "$first" ] && [ "$first" != "$CNI_CONF_NAME" ]; then
    echo "install-cni: warning: $CNI_CONF_DIR/$first sorts before $CNI_CONF_NAME: runtimes use it, not the suite's (remove the previous provider's config)" >&2
fi
exit 0
