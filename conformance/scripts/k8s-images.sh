#!/usr/bin/env bash
# The container images the cluster tests run, built here from local files (no registry):
#   busybox.oci.tar  busybox-static with every applet linked in /bin (sh, httpd, nslookup, ...)
#   coredns.oci.tar  the CoreDNS binary built by build-kubernetes.sh, as /coredns
# Each is an OCI image layout tar for `ctr -n k8s.io images import --base-name
# localhost/cnisuite-<name>`, tag latest (the pause image comes from containerd-cri.sh).
#
#   k8s-images.sh OUT_DIR COREDNS_BINARY
# Skips an image whose tar exists and is newer than its inputs. Prints OUT_DIR.
set -euo pipefail

OUT=${1:?output directory}
COREDNS=${2:?coredns binary}
mkdir -p "$OUT"

oci_tar() { # ROOTFS OUT CMD_JSON
    /usr/bin/python3 - "$1" "$2" "$3" <<'PY'
import hashlib, io, json, sys, tarfile
rootfs, out, cmd = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w") as t:
    t.add(rootfs, arcname=".")
layer = layer.getvalue()
def blob(b):
    return "sha256:" + hashlib.sha256(b).hexdigest(), len(b)
ld, ls = blob(layer)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
                     "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
cd, cs = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": ls}]}).encode()
md, ms = blob(manifest)
index = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
     "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
with tarfile.open(out + ".tmp", "w") as t:
    for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                       ("blobs/sha256/" + ld[7:], layer), ("blobs/sha256/" + cd[7:], config),
                       ("blobs/sha256/" + md[7:], manifest)]:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
PY
    mv "$2.tmp" "$2"
}

if [[ ! $OUT/busybox.oci.tar -nt /bin/busybox ]]; then
    R=$(mktemp -d)
    mkdir -p "$R/bin" "$R/tmp" "$R/etc"
    cp /bin/busybox "$R/bin/busybox"
    for a in $(/bin/busybox --list); do
        [[ $a == busybox ]] || ln -sf busybox "$R/bin/$a"
    done
    echo "root:x:0:0:root:/:/bin/sh" >"$R/etc/passwd"
    oci_tar "$R" "$OUT/busybox.oci.tar" '["/bin/sh"]'
    rm -rf "$R"
fi

if [[ ! $OUT/coredns.oci.tar -nt $COREDNS ]]; then
    R=$(mktemp -d)
    cp "$COREDNS" "$R/coredns"
    oci_tar "$R" "$OUT/coredns.oci.tar" '["/coredns"]'
    rm -rf "$R"
fi
echo "$OUT"
