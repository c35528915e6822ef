#!/usr/bin/env bash
# Builds kubenet-bridge, installs it into ${CNI_BIN_DIR:-/opt/cni/bin}, and networks two pods:
# a node network namespace with two pod namespaces attached by the plugin (as a runtime would
# call it), pods pinging each other and the gateway, then DEL and a full cleanup.
# Run as root on Debian/Ubuntu with a Rust toolchain. Touches nothing outside its namespaces
# except the installed binary.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cni-suite-target}

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== building kubenet-bridge (release, static)"
cargo build --release --quiet -p kubenet-bridge
install -D -m 0755 "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/kubenet-bridge" "$BIN_DIR/kubenet-bridge"
echo "== installed $BIN_DIR/kubenet-bridge ($("$BIN_DIR/kubenet-bridge" --version | head -1))"

NODE=kbdemo-node-$$; PODS=(kbdemo-a-$$ kbdemo-b-$$)
STATE=$(mktemp -d /tmp/kbdemo.XXXXXX)
cleanup() {
    for p in "${PODS[@]}"; do ip netns del "$p" 2>/dev/null || true; done
    ip netns del "$NODE" 2>/dev/null || true
    rm -rf "$STATE"
}
trap cleanup EXIT

cat > "$STATE/net.conf" <<JSON
{"cniVersion":"1.0.0","name":"kubenet","type":"kubenet-bridge","bridge":"cbr0",
 "podCIDR":"10.244.7.0/24","dataDir":"$STATE/ipam","logFile":"$STATE/plugin.log"}
JSON
echo "== config"; cat "$STATE/net.conf"

ip netns add "$NODE"
ip -n "$NODE" link set lo up
cni() { # verb pod
    ip netns exec "$NODE" env CNI_COMMAND="$1" CNI_CONTAINERID="ctr-$2" CNI_NETNS="/var/run/netns/$2" \
        CNI_IFNAME=eth0 CNI_PATH="$BIN_DIR" "$BIN_DIR/kubenet-bridge" < "$STATE/net.conf"
}
declare -A ADDR
for p in "${PODS[@]}"; do
    ip netns add "$p"
    echo "== ADD $p"
    out=$(cni ADD "$p")
    echo "$out"
    ADDR[$p]=$(sed -E 's/.*"address":"([0-9.]+)\/.*/\1/' <<<"$out")
done
A=${PODS[0]}; B=${PODS[1]}
echo "== $A (${ADDR[$A]}) and $B (${ADDR[$B]}) ping each other and the gateway 10.244.7.1"
ip netns exec "$A" ping -c 2 -W 1 "${ADDR[$B]}"
ip netns exec "$B" ping -c 2 -W 1 "${ADDR[$A]}"
for p in "$A" "$B"; do ip netns exec "$p" ping -c 1 -W 1 10.244.7.1; done
echo "== node view: bridge, ports, masquerade table"
ip -n "$NODE" -br link show master cbr0
ip netns exec "$NODE" nft list table ip cni_suite_cbr0
for p in "${PODS[@]}"; do echo "== DEL $p"; cni DEL "$p"; done
echo "== plugin log"; cat "$STATE/plugin.log"
left=$(find "$STATE/ipam/kubenet" -maxdepth 1 -name '10.*' | wc -l)
veths=$(ip -n "$NODE" -br link show type veth | wc -l)
echo "== after DEL: $left leases, $veths veths on the node"
[ "$left" -eq 0 ] && [ "$veths" -eq 0 ] || { echo "demo: DEL left state behind" >&2; exit 1; }
echo "demo: OK"
