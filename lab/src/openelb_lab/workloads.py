"""Workloads and probes the demo and the tests share: the seed's kubia Deployment, Services,
waiting for endpoints, and HTTP requests from inside a lab host."""

from __future__ import annotations

import time
from typing import Any

from lightkube import Client, codecs
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Service, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from openelb.kube import resources as _crd_resources  # noqa: F401 - registers Eip etc. for codecs
from openelb_lab import netns


def kubia_deployment(name: str, namespace: str, replicas: int = 2, spread: bool = True) -> dict[str, Any]:
    """The seed's Deployment (image luksa/kubia, port 8080); `spread` puts replicas on distinct nodes."""
    template_spec: dict[str, Any] = {
        "containers": [{"name": "kubia", "image": "luksa/kubia", "ports": [{"containerPort": 8080}]}]
    }
    if spread:
        template_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": name}},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec},
        },
    }


def service(
    name: str,
    namespace: str,
    selector: str,
    *,
    type_: str = "NodePort",
    dual_stack: bool = True,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": type_,
        "selector": {"app": selector},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    if dual_stack:
        spec["ipFamilyPolicy"] = "PreferDualStack"
        spec["ipFamilies"] = ["IPv4", "IPv6"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": spec,
    }


def apply(client: Client, *docs: dict[str, Any], field_manager: str = "openelb-lab") -> None:
    for doc in docs:
        client.apply(codecs.from_dict(doc), field_manager=field_manager, force=True)


def ensure_namespace(client: Client, name: str, timeout: float = 60, *, for_pods: bool = True) -> None:
    """Create a namespace and wait for its `default` ServiceAccount (pods need it to be admitted;
    `for_pods=False`: Services only, no need to wait for the controller-manager, which can take
    a minute to notice new namespaces after the apiserver-outage tests restarted its apiserver)."""
    apply(client, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    if for_pods:
        poll(f"ServiceAccount {name}/default", lambda: client.get(ServiceAccount, "default", namespace=name), timeout)


def delete_namespace(client: Client, name: str) -> None:
    try:
        client.delete(Namespace, name)
    except ApiError as exc:
        if exc.status.code != 404:
            raise


def poll(what: str, fn: Any, timeout: float, interval: float = 0.25) -> Any:
    """Call `fn` until it returns something truthy without raising; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = fn()
            if result:
                return result
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def ready_endpoints(client: Client, namespace: str, service_name: str) -> dict[str, list[str]]:
    """Ready endpoint addresses of a Service by address family, from its EndpointSlices."""
    out: dict[str, list[str]] = {}
    for sl in client.list(EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": service_name}):
        for ep in sl.endpoints or []:
            if ep.conditions is None or ep.conditions.ready is not False:
                out.setdefault(sl.addressType, []).extend(ep.addresses)
    return out


def external_ip(client: Client, namespace: str, name: str, timeout: float = 60) -> str:
    """Wait for a LoadBalancer Service's first ingress IP."""

    def first() -> str | None:
        svc = client.get(Service, name, namespace=namespace)
        lb = svc.status.loadBalancer if svc.status else None
        return lb.ingress[0].ip if lb and lb.ingress else None

    return str(poll(f"the EXTERNAL-IP of {namespace}/{name}", first, timeout))


def node_port(client: Client, namespace: str, name: str) -> int:
    svc = client.get(Service, name, namespace=namespace)
    assert svc.spec is not None and svc.spec.ports
    port = svc.spec.ports[0].nodePort
    if port is None:
        raise RuntimeError(f"Service {namespace}/{name} has no nodePort")
    return port


def http_get(netns_name: str, url: str, timeout: float = 3) -> str:
    """GET `url` with curl from inside a lab namespace; the body, or raises LabCommandError."""
    return netns.run(
        netns.exec_argv(netns_name, ["curl", "-sS", "-g", "--max-time", str(timeout), url]),
        timeout=timeout + 5,
    )


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def collect_pod_names(netns_name: str, target: str, expected: int, timeout: float = 20) -> list[str]:
    """Request `target` until `expected` distinct pods answered or `timeout` passed; the answers seen.

    kube-proxy applies endpoint changes on its own sync period, so a Service whose EndpointSlices
    are complete may still reach a subset of its pods for a moment: keep asking for a bounded time.
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = http_get(netns_name, target).strip()
        except netns.LabCommandError:
            time.sleep(0.3)
            continue
        if body.startswith("You've hit "):
            seen.append(body.removeprefix("You've hit "))
            if len(set(seen)) >= expected:
                break
        time.sleep(0.05)
    return seen
