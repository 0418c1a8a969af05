"""lightkube classes for OpenELB's custom resources (generic: their bodies are plain dicts)."""

from __future__ import annotations

from lightkube.generic_resource import create_global_resource

from openelb.api.names import GROUP, VERSION

Eip = create_global_resource(GROUP, VERSION, "Eip", "eips")
BgpConf = create_global_resource(GROUP, VERSION, "BgpConf", "bgpconfs")
BgpPeer = create_global_resource(GROUP, VERSION, "BgpPeer", "bgppeers")
