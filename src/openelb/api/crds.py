"""The CustomResourceDefinitions of `network.kubesphere.io`, generated from this one source.

Field names match OpenELB v0.6 verbatim (so its manifests apply unchanged); v1alpha2 is served and
stored with a status subresource, v1alpha1 stays served for old manifests. Unlike the Go original,
the schemas carry real types and enums so the apiserver rejects garbage before any code sees it.
"""

from __future__ import annotations

from typing import Any

import yaml

from openelb.api import bgp
from openelb.api.names import GROUP, LEGACY_VERSION, VERSION

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer", "format": "int64"}
INT32: Schema = {"type": "integer", "format": "int32"}
STR_LIST: Schema = {"type": "array", "items": STR}
STR_MAP: Schema = {"type": "object", "additionalProperties": STR}


def ranged(limits: tuple[int, int]) -> Schema:
    return {"type": "integer", "format": "int64", "minimum": limits[0], "maximum": limits[1]}


SECONDS: Schema = {"type": "string", "pattern": r"^[0-9]{0,5}$", "maxLength": 5}
"""GoBGP's timers: strings in OpenELB's CRD; whole seconds here (each one's range: `api.bgp`)."""


NAME: Schema = {"type": "string", "maxLength": bgp.MAX_NAME}
ADDRESS: Schema = {"type": "string", "maxLength": 45}


def obj(properties: dict[str, Schema], *, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


LABEL_SELECTOR = obj(
    {
        "matchLabels": STR_MAP,
        "matchExpressions": {
            "type": "array",
            "items": obj(
                {
                    "key": STR,
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": STR_LIST,
                },
                required=["key", "operator"],
            ),
        },
    },
)
LABEL_SELECTOR["x-kubernetes-map-type"] = "atomic"

GRACEFUL_RESTART = obj(
    {
        "enabled": BOOL,
        "restartTime": ranged(bgp.BGPCONF_INTS["gracefulRestart.restartTime"]),
        "helperOnly": BOOL,
        "deferralTime": INT,
        "notificationEnabled": BOOL,
        "longlivedEnabled": BOOL,
        "staleRoutesTime": INT,
        "peerRestartTime": INT,
        "peerRestarting": BOOL,
        "localRestarting": BOOL,
        "mode": STR,
    }
)

# ---- v1alpha2 -------------------------------------------------------------------------------

EIP_SPEC = obj(
    {
        "address": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "description": "IP, CIDR or first-last range (v4 or v6)",
        },
        "protocol": {"type": "string", "enum": ["bgp", "layer2", "vip"]},
        "interface": {
            "type": "string",
            "maxLength": 64,
            "description": "NIC name or can_reach:<ip>; required for layer2 and vip",
        },
        "disable": BOOL,
        "usingKnownIPs": BOOL,
        "priority": INT32,
        "namespaces": {"type": "array", "items": {"type": "string", "maxLength": 63}, "maxItems": 1000},
        "namespaceSelector": STR_MAP,
    },
    required=["address"],
)
EIP_STATUS = obj(
    {
        "occupied": BOOL,
        "usage": INT,
        "poolSize": INT,
        "used": STR_MAP,
        "firstIP": STR,
        "lastIP": STR,
        "ready": BOOL,
        "v4": BOOL,
        "conditions": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
)

BGPCONF_SPEC = obj(
    {
        "as": ranged(bgp.BGPCONF_INTS["as"]),
        "asPerRack": {"type": "object", "additionalProperties": ranged(bgp.BGPCONF_INTS["as"]), "maxProperties": 64},
        "routerId": ADDRESS,
        "listenPort": ranged(bgp.BGPCONF_INTS["listenPort"]),
        "listenAddresses": {"type": "array", "items": ADDRESS, "maxItems": bgp.MAX_ADDRESSES},
        "families": {"type": "array", "items": INT},
        "useMultiplePaths": BOOL,
        "gracefulRestart": GRACEFUL_RESTART,
        "policy": STR,
    }
)
BGPCONF_STATUS = obj({"nodesConfStatus": {"type": "object", "additionalProperties": obj({"routerId": STR, "as": INT})}})

FAMILY = obj(
    {
        "afi": {"type": "string", "enum": ["AFI_UNKNOWN", "AFI_IP", "AFI_IP6", "AFI_L2VPN", "AFI_LS", "AFI_OPAQUE"]},
        "safi": STR,
    }
)
BGPPEER_SPEC = obj(
    {
        "conf": obj(
            {
                "authPassword": {"type": "string", "maxLength": bgp.MAX_PASSWORD},
                "description": NAME,
                "localAs": ranged(bgp.BGPPEER_INTS["conf.localAs"]),
                "neighborAddress": ADDRESS,
                "peerAs": ranged(bgp.BGPPEER_INTS["conf.peerAs"]),
                "peerGroup": STR,
                "peerType": INT,
                "removePrivateAs": STR,
                "routeFlapDamping": BOOL,
                "sendCommunity": INT,
                "neighborInterface": STR,
                "vrf": STR,
                "allowOwnAs": INT,
                "replacePeerAs": BOOL,
                "adminDown": BOOL,
            }
        ),
        "ebgpMultihop": obj({"enabled": BOOL, "multihopTtl": ranged(bgp.BGPPEER_INTS["ebgpMultihop.multihopTtl"])}),
        "timers": obj(
            {
                "config": obj(
                    {
                        "connectRetry": SECONDS,
                        "holdTime": SECONDS,
                        "keepaliveInterval": SECONDS,
                        "minimumAdvertisementInterval": STR,
                    }
                )
            }
        ),
        "transport": obj(
            {
                "mtuDiscovery": BOOL,
                "passiveMode": BOOL,
                "remoteAddress": ADDRESS,
                "remotePort": ranged(bgp.BGPPEER_INTS["transport.remotePort"]),
                "tcpMss": INT,
            }
        ),
        "gracefulRestart": GRACEFUL_RESTART,
        "afiSafis": {
            "type": "array",
            "maxItems": 8,
            "items": obj(
                {
                    "config": obj({"family": FAMILY, "enabled": BOOL}),
                    "addPaths": obj({"config": obj({"receive": BOOL, "sendMax": ranged((0, 255))})}),
                    "mpGracefulRestart": obj({"config": obj({"enabled": BOOL})}),
                }
            ),
        },
        "nodeSelector": LABEL_SELECTOR,
        "bfd": obj(
            {
                "enabled": BOOL,
                "minRx": ranged(bgp.BGPPEER_INTS["bfd.minRx"]),
                "minTx": ranged(bgp.BGPPEER_INTS["bfd.minTx"]),
                "multiplier": ranged(bgp.BGPPEER_INTS["bfd.multiplier"]),
            },
            description="OpenELB-Python extension: BFD (RFC 5880) for this peer; times in milliseconds",
        ),
    }
)
BGPPEER_STATUS = obj(
    {
        "nodesPeerStatus": {
            "type": "object",
            "additionalProperties": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        }
    }
)

# ---- v1alpha1 (legacy; served, not stored) ---------------------------------------------------

V1ALPHA1_IPV4 = r"^([0-9]{1,3}\.){3}[0-9]{1,3}((\/([0-9]|[1-2][0-9]|3[0-2]))|(\-([0-9]{1,3}\.){3}[0-9]{1,3}))?$"
EIP_V1ALPHA1 = obj(
    {
        "spec": obj(
            {
                "address": {"type": "string", "pattern": V1ALPHA1_IPV4},
                "protocol": {"type": "string", "enum": ["bgp", "layer2"]},
                "disable": BOOL,
                "usingKnownIPs": BOOL,
            },
            required=["address"],
        ),
        "status": obj({"occupied": BOOL, "usage": INT, "poolSize": INT}),
    }
)
BGPCONF_V1ALPHA1 = obj(
    {
        "spec": obj(
            {
                "as": INT,
                "routerID": {"type": "string", "pattern": r"^([0-9]{1,3}\.){3}[0-9]{1,3}$"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
            required=["as", "routerID", "port"],
        ),
        "status": {"type": "object"},
    }
)
BGPPEER_V1ALPHA1 = obj(
    {
        "spec": obj(
            {
                "config": obj(
                    {"peerAs": INT, "neighborAddress": {"type": "string", "pattern": r"^([0-9]{1,3}\.){3}[0-9]{1,3}$"}},
                    required=["peerAs", "neighborAddress"],
                ),
                "addPaths": obj({"sendMax": INT}),
                "transport": obj(
                    {"passiveMode": BOOL, "remotePort": {"type": "integer", "minimum": 1, "maximum": 65535}}
                ),
                "usingPortForward": BOOL,
            }
        ),
        "status": {"type": "object"},
    }
)


def _crd(
    kind: str,
    plural: str,
    *,
    spec: Schema,
    status: Schema,
    legacy: Schema,
    columns: list[dict[str, Any]] | None = None,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    names: dict[str, Any] = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if categories:
        names["categories"] = categories
    v2: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "schema": {"openAPIV3Schema": obj({"spec": spec, "status": status})},
    }
    v1: dict[str, Any] = {
        "name": LEGACY_VERSION,
        "served": True,
        "storage": False,
        "schema": {"openAPIV3Schema": legacy},
    }
    if columns:
        v2["additionalPrinterColumns"] = columns
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {"group": GROUP, "names": names, "scope": "Cluster", "versions": [v1, v2]},
    }


def definitions() -> list[dict[str, Any]]:
    """The three CRDs, ready to apply."""
    eip_columns = [
        {"name": "cidr", "type": "string", "jsonPath": ".spec.address"},
        {"name": "usage", "type": "integer", "jsonPath": ".status.usage"},
        {"name": "total", "type": "integer", "jsonPath": ".status.poolSize"},
    ]
    return [
        _crd(
            "Eip",
            "eips",
            spec=EIP_SPEC,
            status=EIP_STATUS,
            legacy=EIP_V1ALPHA1,
            columns=eip_columns,
            categories=["networking"],
        ),
        _crd("BgpConf", "bgpconfs", spec=BGPCONF_SPEC, status=BGPCONF_STATUS, legacy=BGPCONF_V1ALPHA1),
        _crd("BgpPeer", "bgppeers", spec=BGPPEER_SPEC, status=BGPPEER_STATUS, legacy=BGPPEER_V1ALPHA1),
    ]


def render() -> str:
    return yaml.safe_dump_all(definitions(), sort_keys=False)
