"""A Service's assigned IPs, read from `status.loadBalancer.ingress` in one place.

The controller (what it assigned, or Go OpenELB did before), the speakers (what to announce) and
`openelb status` all read the same field; parsing it once here keeps them agreeing on what counts
as an IP (an unparsable entry is skipped by all three, not by some).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openelb.api.ranges import AddressError, IPAddress, parse_ip

if TYPE_CHECKING:
    from lightkube.resources.core_v1 import Service


def ingress_ips(svc: Service) -> list[IPAddress]:
    """The IPs in status.loadBalancer.ingress, in order; hostnames and garbage left out."""
    out: list[IPAddress] = []
    lb = svc.status.loadBalancer if svc.status else None
    for ing in (lb.ingress if lb else None) or []:
        if ing.ip:
            try:
                out.append(parse_ip(ing.ip))
            except AddressError:
                continue
    return out
