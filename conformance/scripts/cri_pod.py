# A minimal CRI v1 client for tests/runtimes.rs: the calls kubelet makes to get a pod network,
# one per invocation, each printing one JSON object. Adapted from the peers recipe
# (shared/peers/cri/cri_pod.py); the stubs (api_pb2*.py) come from install-test-deps.sh.
#
#   python cri_pod.py SOCKET status
#   python cri_pod.py SOCKET update-pod-cidr CIDR      (kubelet's UpdateRuntimeConfig)
#   python cri_pod.py SOCKET run NAME UID LOGDIR       (RunPodSandbox)
#   python cri_pod.py SOCKET pod-status ID             (PodSandboxStatus)
#   python cri_pod.py SOCKET stop ID                   (StopPodSandbox: CNI DEL)
#   python cri_pod.py SOCKET remove ID                 (RemovePodSandbox)
import json
import sys
import time

import grpc
import api_pb2 as pb
import api_pb2_grpc as rpc


def main():
    sock, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    rt = rpc.RuntimeServiceStub(grpc.insecure_channel("unix://" + sock))
    t0 = time.time()
    if cmd == "status":
        st = rt.Status(pb.StatusRequest())
        cond = {c.type: (c.status, c.reason, c.message) for c in st.status.conditions}
        net = cond.get("NetworkReady", (False, "", ""))
        out = {
            "version": rt.Version(pb.VersionRequest()).runtime_version,
            "runtimeReady": cond.get("RuntimeReady", (False,))[0],
            "networkReady": net[0],
            "networkReason": net[1],
            "networkMessage": net[2],
        }
    elif cmd == "update-pod-cidr":
        rt.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(
            runtime_config=pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr=args[0]))))
        out = {}
    elif cmd == "run":
        name, uid, logdir = args
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name, log_directory=logdir,
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=""))
        out = {"id": rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id}
    elif cmd == "pod-status":
        s = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=args[0])).status
        out = {
            "state": pb.PodSandboxState.Name(s.state),
            "ip": s.network.ip,
            "additionalIps": [a.ip for a in s.network.additional_ips],
            "netns": s.linux.namespaces.options.network,
        }
    elif cmd == "stop":
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=args[0]))
        out = {}
    elif cmd == "remove":
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=args[0]))
        out = {}
    else:
        sys.exit("unknown command " + cmd)
    out["ms"] = round((time.time() - t0) * 1000)
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        print(json.dumps({"error": e.code().name, "details": e.details()}))
        sys.exit(1)
