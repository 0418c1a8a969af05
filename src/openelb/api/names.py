"""Every annotation, label, finalizer and name that OpenELB v0.6 users and manifests rely on.

Kept verbatim so existing manifests and Go-OpenELB-written objects keep working unchanged.
"""

from __future__ import annotations

GROUP = "network.kubesphere.io"
VERSION = "v1alpha2"
LEGACY_VERSION = "v1alpha1"

# Service opt-in and requests
ANNOTATION_LB = "lb.kubesphere.io/v1alpha1"
LB_VALUE = "openelb"
ANNOTATION_POOL = "eip.openelb.kubesphere.io/v1alpha2"
"""On a Service: the Eip to allocate from. As a label: the Eip the controller allocated from."""
ANNOTATION_IP = "eip.openelb.kubesphere.io/v1alpha1"
"""A specific IP (or `v4,v6` for dual-stack); overrides spec.loadBalancerIP."""
ANNOTATION_DEFAULT_EIP = "eip.openelb.kubesphere.io/is-default-eip"
ANNOTATION_SHARE_KEY = "lb.kubesphere.io/share-key"
"""New: Services with the same key may share an IP when their ports do not overlap."""
ANNOTATION_LEGACY_PROTOCOL = "protocol.openelb.kubesphere.io/v1alpha1"
"""Accepted and ignored: the protocol comes from the Eip since v0.6."""
ANNOTATION_LAYER2_ANNOUNCER = "layer2.openelb.kubesphere.io/v1alpha1"
ANNOTATION_VIP_MASTER = "vip.openelb.kubesphere.io/v1alpha1"
"""New, on a Service: the node that is VRRP master for its IP (as the Layer2 announcer)."""
ANNOTATION_VIP_VRID = "vip.openelb.kubesphere.io/vrid"
"""New, on a `vip` Eip: the VRID (`42`) or VRID range (`40-47`) its virtual routers use."""
ANNOTATION_VIP_ADVERT_INTERVAL = "vip.openelb.kubesphere.io/advert-interval"
"""New, on a `vip` Eip: the VRRP advertisement interval (`100ms`, `1s`, `0.5`; default 100ms)."""

# NodeProxy mode (Go OpenELB's names, its typo included)
ANNOTATION_NODE_PROXY_TYPE = "node-proxy.openelb.kubesphere.io/type"
"""On a Service: `deployment` or `daemonset`. On a proxy workload: the Service's namespace (sic)."""
NODE_PROXY_TYPES = ("deployment", "daemonset")
ANNOTATION_NODE_PROXY_EXTERNAL_IP = "node-proxy.openelb.kubesphere.io/external-ip"
ANNOTATION_NODE_PROXY_INTERNAL_IP = "node-proxy.openelb.kubesphere.io/internal-ip"
ANNOTATION_NODE_PROXY_SERVICE = "node-proxy.openelb.kubesphere.io/service"
"""New, on a proxy workload: `namespace/name` of its Service (the workload's name cannot be parsed)."""
LABEL_NODE_PROXY_PREFERRED = "node-proxy.openelb.kubesphere.io/external-ip-preffered"
LABEL_NODE_PROXY_EXCLUDE = "node-proxy.openelb.kubesphere.io/exclude-node"
LABEL_NODE_PROXY = "node-proxy.openelb.kubesphere.io/proxy"
"""New, on proxy workloads and their Pods: what the controller's informers select."""
FINALIZER_NODE_PROXY = "node-proxy.openelb.kubesphere.io/finalizer"
"""Go OpenELB's; we only remove it (see GO_FINALIZERS)."""

LABEL_POOL = ANNOTATION_POOL
LABEL_RACK = "openelb.kubesphere.io/rack"
LABEL_CNI = "openelb.kubesphere.io/cni"

FINALIZER_SERVICE = "finalizer.lb.kubesphere.io/v1alpha1"
"""Go OpenELB's on Services (controller) and on BgpConf/BgpPeer (speakers)."""
FINALIZER_EIP = "finalizer.ipam.kubesphere.io/v1alpha1"
GO_FINALIZERS = (FINALIZER_SERVICE, FINALIZER_EIP, FINALIZER_NODE_PROXY)
"""Finalizers Go OpenELB adds and we never do, only remove where we find them. A finalizer that
only OpenELB's own daemons remove makes every uninstall hang (`kubectl delete -f` removes the RBAC
and the Pods ~100 ms after the CRDs, and user Services would keep theirs forever); each job they
did is level-triggered here instead: a Service's IP is free once the Service is gone (the
allocator is rebuilt from live Services), an in-use Eip's deletion is refused by the webhook, a
NodeProxy workload is deleted on its Service's DELETED event or, if missed, at the next start."""

DEFAULT_LB_CLASS = "openelb.kubesphere.io/lb"
DEFAULT_NAMESPACE = "openelb-system"
LEADER_LEASE = "openelb-controller"
MEMBERLIST_SECRET = "openelb-memberlist"  # noqa: S105 - a Secret's name
"""The speakers' heartbeat key (data key `key`); the controller makes it if missing."""
PUBLISHED_HEARTBEAT_KEY = "openelb-speakers"
"""Go OpenELB's default `--secret`, also in its deploy/openelb.yaml: known to anyone."""

CONTROLLER_COMPONENT = "OpenELBController"
EIP_COMPONENT = "EIPController"
