#!/bin/bash
# containerd 1.6 (Debian) with its CRI plugin in a private directory, for tests/runtimes.rs:
# its own root, state, socket and CNI dirs, a local pause image, nothing shared with a
# containerd the host may run. The steps follow the peers recipe (shared/peers/containerd-cri.sh);
# packages and the CRI client come from install-test-deps.sh.
#
#   containerd-cri.sh start DIR CNI_BIN_DIR CNI_CONF_DIR [CONF_TEMPLATE]
#       writes DIR/config.toml, starts containerd (pid in DIR/pid, log DIR/containerd.log,
#       socket DIR/containerd.sock), imports localhost/cnisuite-pause:latest; prints the socket
#   containerd-cri.sh stop DIR
#       stops containerd and the shims it started (found by DIR in their command lines) and
#       unmounts what is left below DIR
set -euo pipefail

cmd=${1:?start or stop}
D=${2:?directory}

stop() {
    if [ -f "$D/pid" ]; then
        kill "$(cat "$D/pid")" 2>/dev/null || true
    fi
    # Shims outlive containerd; each names containerd's socket (inside $D) on its command line.
    for p in /proc/[0-9]*; do
        if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$D/"; then
            kill -9 "${p#/proc/}" 2>/dev/null || true
        fi
    done
    sleep 0.2
    # Deepest first.
    awk -v d="$D/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    rm -f "$D/pid"
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR ..." >&2; exit 1; }
BIN=${3:?CNI bin dir}
CONF=${4:?CNI conf dir}
TEMPLATE=${5:-}
mkdir -p "$D/root" "$D/state" "$D/opt" "$CONF"

# 1. Config: private root/state/socket/opt, our CNI dirs, the local pause image, and no OOM
# score below containerd's own (there is no CAP_SYS_RESOURCE on these machines).
containerd config default | sed \
    -e "s#^root = \"/var/lib/containerd\"#root = \"$D/root\"#" \
    -e "s#^state = \"/run/containerd\"#state = \"$D/state\"#" \
    -e "s#address = \"/run/containerd/containerd.sock\"#address = \"$D/containerd.sock\"#" \
    -e "s#path = \"/opt/containerd\"#path = \"$D/opt\"#" \
    -e "s#bin_dir = \"/opt/cni/bin\"#bin_dir = \"$BIN\"#" \
    -e "s#conf_dir = \"/etc/cni/net.d\"#conf_dir = \"$CONF\"#" \
    -e "s#conf_template = \"\"#conf_template = \"$TEMPLATE\"#" \
    -e 's#sandbox_image = ".*"#sandbox_image = "localhost/cnisuite-pause:latest"#' \
    -e 's#restrict_oom_score_adj = false#restrict_oom_score_adj = true#' >"$D/config.toml"
grep -q "bin_dir = \"$BIN\"" "$D/config.toml" || { echo "containerd-cri: config has no CNI bin_dir to set" >&2; exit 1; }

containerd --config "$D/config.toml" >"$D/containerd.log" 2>&1 &
echo $! >"$D/pid"
for _ in $(seq 100); do
    [ -S "$D/containerd.sock" ] && break
    sleep 0.1
done
[ -S "$D/containerd.sock" ] || { echo "containerd-cri: containerd did not start:" >&2; tail -20 "$D/containerd.log" >&2; exit 1; }

# 2. The pause image: busybox-static's sleep as an OCI image layout, built here (no registry,
# no second image store), imported into the CRI namespace.
R="$D/pause-rootfs"
mkdir -p "$R/bin"
cp /bin/busybox "$R/bin/busybox"
ln -sf busybox "$R/bin/sleep"
ln -sf busybox "$R/bin/sh"
/usr/bin/python3 - "$R" "$D/pause.oci.tar" <<'PY'
import hashlib, io, json, sys, tarfile
rootfs, out = sys.argv[1], sys.argv[2]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    t.add(rootfs, arcname=".")
layer = layer.getvalue()
def blob(b):
    return "sha256:" + hashlib.sha256(b).hexdigest(), len(b)
ld, ls = blob(layer)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": ["/bin/sleep", "2147483647"]},
                     "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
cd, cs = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = blob(manifest)
index = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
     "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
with tarfile.open(out, "w") as t:
    for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                       ("blobs/sha256/" + ld[7:], layer), ("blobs/sha256/" + cd[7:], config),
                       ("blobs/sha256/" + md[7:], manifest)]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
PY
# Seen once in a cold CI run under heavy load: the import returned and the image was not
# listed yet. Wait for it (5 s), and import once more before giving up.
imported() {
    for _ in $(seq 50); do
        ctr -a "$D/containerd.sock" -n k8s.io images ls -q | grep -qx 'localhost/cnisuite-pause:latest' && return 0
        sleep 0.1
    done
    return 1
}
for attempt in 1 2; do
    ctr -a "$D/containerd.sock" -n k8s.io images import --base-name localhost/cnisuite-pause "$D/pause.oci.tar" >/dev/null
    imported && break
    if [ "$attempt" = 2 ]; then
        echo "containerd-cri: pause image not imported; images:" >&2
        ctr -a "$D/containerd.sock" -n k8s.io images ls >&2 || true
        tail -20 "$D/containerd.log" >&2
        exit 1
    fi
done
echo "$D/containerd.sock"
