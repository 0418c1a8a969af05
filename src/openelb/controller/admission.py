"""Admission rules for Eip, BgpConf and BgpPeer: pure functions from an AdmissionReview request
(plus the current Eips) to a verdict. OpenELB's messages are kept where it had them; we add the
checks it lacked: deleting or shrinking an Eip whose IPs are in use, and BGP basics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from openelb.api import bgp
from openelb.api.eip import EipView, validate
from openelb.api.ranges import AddressError, parse_range


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""


ALLOW = Verdict(True)


def _contains(rng: Any, key: str) -> bool:
    """Whether a `status.used` key lies in the range; a key that is no IP is nobody's address."""
    try:
        return bool(rng.contains(key))
    except ValueError:
        return True


def _used(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("status") or {}).get("used") or {})


def review_eip(request: Mapping[str, Any], existing: Iterable[Mapping[str, Any]]) -> Verdict:
    op = request.get("operation")
    new, old = request.get("object"), request.get("oldObject")
    others = [EipView.from_object(o) for o in existing]
    if op == "DELETE":
        used = _used(old)
        if used:
            holders = sorted({k for keys in used.values() for k in keys.split(";") if k})
            return Verdict(False, f"eip is in use by {', '.join(holders)}; release those services first")
        return ALLOW
    if new is None:
        return ALLOW
    eip = EipView.from_object(new)
    if op == "UPDATE" and old is not None and (new.get("metadata") or {}).get("deletionTimestamp"):
        return ALLOW  # finalizer removal while deleting
    problems = validate(eip, others)
    if op == "UPDATE" and old is not None:
        used = _used(old)
        try:
            rng = parse_range(eip.address)
        except AddressError:
            rng = None
        if rng is not None:
            orphaned = [ip for ip in used if not _contains(rng, ip)]
            if orphaned:
                problems.append(
                    f"the new address {eip.address} leaves out ip {', '.join(sorted(orphaned))} in use by "
                    f"{', '.join(sorted({k for ip in orphaned for k in used[ip].split(';') if k}))}"
                )
    if problems:
        return Verdict(False, "; ".join(problems))
    return ALLOW


def review_bgpconf(request: Mapping[str, Any]) -> Verdict:
    obj = request.get("object")
    if request.get("operation") == "DELETE" or obj is None:
        return ALLOW
    problems = bgp.validate_bgpconf(obj.get("spec") or {})
    return Verdict(False, "; ".join(problems)) if problems else ALLOW


def review_bgppeer(request: Mapping[str, Any]) -> Verdict:
    obj = request.get("object")
    if request.get("operation") == "DELETE" or obj is None:
        return ALLOW
    problems = bgp.validate_bgppeer(obj.get("spec") or {})
    return Verdict(False, "; ".join(problems)) if problems else ALLOW


def response(review: Mapping[str, Any], verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview answer, in the version asked (v1; v1beta1 where a configuration lists
    it first, as Go OpenELB's does: the apiserver refuses an answer in another version)."""
    req = review.get("request")
    version = (
        "admission.k8s.io/v1beta1" if review.get("apiVersion") == "admission.k8s.io/v1beta1" else "admission.k8s.io/v1"
    )
    uid = str(req.get("uid", "")) if isinstance(req, Mapping) else ""
    body: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        body["status"] = {"code": 403, "reason": "Forbidden", "message": verdict.message}
    return {"apiVersion": version, "kind": "AdmissionReview", "response": body}
