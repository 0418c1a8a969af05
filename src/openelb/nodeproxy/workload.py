"""NodeProxy's pure part: the proxy workload for a Service, and what its ready Pods publish.

Go OpenELB ran, per Service, a Deployment or DaemonSet whose pods DNAT each Service port from a
hostPort to the ClusterIP with iptables (a privileged init container for ip_forward, NET_ADMIN for
the rules, two extra images). Ours runs `openelb forward` from our own image in the node's network
namespace: it listens on the Service's ports and relays each connection (TCP) or flow (UDP) to the
ClusterIP, where kube-proxy picks a Pod. No capability at all and a non-root user (for a port
below 1024: UID 0 with NET_BIND_SERVICE alone, the only way a Kubernetes container keeps one),
no rules to leave behind when it dies, and a port already taken on a node is a bind error there
(that Pod stays unready, the others serve) instead of a silent DNAT shadowing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openelb.api import names

DEFAULT_IMAGE = "docker.io/openelb/openelb-python:0.1.0"


@dataclass(frozen=True, order=True)
class ServicePort:
    protocol: str
    port: int


@dataclass(frozen=True)
class ProxySpec:
    """What a proxy workload is made from: everything in it derives from these fields."""

    service: str
    """`namespace/name`."""
    kind: str
    """`deployment` or `daemonset`."""
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]


def workload_name(namespace: str, name: str) -> str:
    """Go OpenELB's name, `node-proxy-<svc>-<ns>`, cut with a hash when over 63 characters."""
    full = f"node-proxy-{name}-{namespace}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[:54]}-{digest}"


def proxy_spec(svc_key: str, kind: str, cluster_ips: Iterable[str], ports: Iterable[tuple[str, int]]) -> ProxySpec:
    return ProxySpec(
        svc_key,
        kind,
        tuple(ip for ip in cluster_ips if ip and ip != "None"),
        tuple(sorted({ServicePort(proto.upper(), int(port)) for proto, port in ports})),
    )


def manifest(spec: ProxySpec, namespace: str, image: str) -> dict[str, Any]:
    """The Deployment or DaemonSet (server-side applied as a whole on every change)."""
    svc_ns, svc_name = spec.service.split("/", 1)
    name = workload_name(svc_ns, svc_name)
    labels = {"name": name, names.LABEL_NODE_PROXY: "true"}
    args = ["forward", f"--ready-name={name}", *(f"--to={ip}" for ip in spec.cluster_ips)]
    args += [f"--port={p.protocol.lower()}/{p.port}" for p in spec.ports]
    caps = ["NET_BIND_SERVICE"] if any(p.port < 1024 for p in spec.ports) else []
    # A capability survives the exec into the container's program only for UID 0: Kubernetes sets
    # no ambient capabilities, so a non-root user's added ones are gone by the time it binds (the
    # lab running the image under runc found exactly that: port 80 refused). Root then, with
    # nothing but NET_BIND_SERVICE; without a port below 1024, no capability and UID 65532.
    uid = 0 if caps else 65532
    container: dict[str, Any] = {
        "name": "forward",
        "image": image,
        "command": ["openelb"],
        "args": args,
        "ports": [
            {
                "name": f"{p.protocol.lower()}-{p.port}",
                "containerPort": p.port,
                "hostPort": p.port,
                "protocol": p.protocol,
            }
            for p in spec.ports
        ],
        "securityContext": {
            "runAsUser": uid,
            "runAsGroup": uid,
            "runAsNonRoot": uid != 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], **({"add": caps} if caps else {})},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}},
    }
    # Ready once *our* relay holds every port (a probe of the port itself would pass for whatever
    # program took it): `openelb forward --check` asks the relay's abstract socket.
    container["readinessProbe"] = {"exec": {"command": ["openelb", "forward", "--check", name]}, "periodSeconds": 2}
    pod_spec = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 5,
        "tolerations": [
            {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": names.LABEL_NODE_PROXY_EXCLUDE, "operator": "DoesNotExist"}]}
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 10,
                        "preference": {
                            "matchExpressions": [{"key": names.LABEL_NODE_PROXY_PREFERRED, "operator": "Exists"}]
                        },
                    }
                ],
            }
        },
        "containers": [container],
    }
    kind = "Deployment" if spec.kind == "deployment" else "DaemonSet"
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"name": name}},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if kind == "Deployment":
        body["replicas"] = 1
        body["strategy"] = {"type": "Recreate"}  # the new Pod needs the old one's ports
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                names.ANNOTATION_LB: names.LB_VALUE,
                names.ANNOTATION_NODE_PROXY_TYPE: svc_ns,  # (sic) Go OpenELB's
                names.ANNOTATION_NODE_PROXY_SERVICE: spec.service,
            },
        },
        "spec": body,
    }


@dataclass(frozen=True)
class Published:
    external: tuple[str, ...]
    internal: tuple[str, ...]

    @property
    def ingress(self) -> tuple[str, ...]:
        """What `kubectl get svc` shows (K3s servicelb's habit): the external addresses if any
        serving node has one, else the internal ones."""
        return self.external or self.internal

    def annotations(self) -> dict[str, str | None]:
        return {
            names.ANNOTATION_NODE_PROXY_EXTERNAL_IP: ",".join(self.external) or None,
            names.ANNOTATION_NODE_PROXY_INTERNAL_IP: ",".join(self.internal) or None,
        }


def published(ready_nodes: Iterable[str], addresses: Mapping[str, Mapping[str, tuple[str, ...]]]) -> Published:
    """The addresses of the nodes whose proxy Pod is Running and Ready, sorted (as Go OpenELB)."""
    external: set[str] = set()
    internal: set[str] = set()
    for node in ready_nodes:
        by_type = addresses.get(node, {})
        external.update(by_type.get("ExternalIP", ()))
        internal.update(by_type.get("InternalIP", ()))
    return Published(tuple(sorted(external, key=_ip_order)), tuple(sorted(internal, key=_ip_order)))


def _ip_order(ip: str) -> tuple[int, str]:
    return (":" in ip, ip)
