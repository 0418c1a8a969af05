import ipaddress

import pytest

from openelb.api.ranges import AddressError, IPRange, parse_range


@pytest.mark.parametrize(
    ("text", "first", "last", "size"),
    [
        ("192.168.1.1", "192.168.1.1", "192.168.1.1", 1),
        ("192.168.0.1/24", "192.168.0.0", "192.168.0.255", 256),  # host bits dropped, as OpenELB
        ("192.168.1.240-192.168.1.250", "192.168.1.240", "192.168.1.250", 11),  # the seed's pool
        ("192.168.1.0/32", "192.168.1.0", "192.168.1.0", 1),
        ("0.0.0.0/0", "0.0.0.0", "255.255.255.255", 2**32),
        ("2001:db8::/120", "2001:db8::", "2001:db8::ff", 256),
        ("2001:db8::/64", "2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", 2**64),  # Go OpenELB: size 0
        ("2001:db8::1-2001:db8::3", "2001:db8::1", "2001:db8::3", 3),
        (" 198.18.0.10 - 198.18.0.20 ", "198.18.0.10", "198.18.0.20", 11),
    ],
)
def test_formats(text: str, first: str, last: str, size: int) -> None:
    r = parse_range(text)
    assert (str(r.first_ip), str(r.last_ip), r.size) == (first, last, size)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "192.168.1.10-192.168.1.1",
        "1.1.1.1-1.1.1.2-1.1.1.3",
        "1.1.1.1-2001:db8::1",
        "192.168.1.0/255.255.255.0",
        "192.168.1.0/33",
        "300.1.1.1",
    ],
)
def test_invalid_formats_are_refused_with_a_readable_message(text: str) -> None:
    with pytest.raises(AddressError, match="invalid eip address format"):
        parse_range(text)


def test_overlap_and_containment() -> None:
    a = parse_range("192.168.0.0/24")
    assert a.overlaps(parse_range("192.168.0.255-192.168.1.3"))
    assert not a.overlaps(parse_range("192.168.1.0-192.168.1.3"))  # adjacent is not overlapping
    assert not a.overlaps(IPRange(6, a.first, a.last))  # families never overlap (Go OpenELB edge case)
    assert a.contains("192.168.0.7") and not a.contains("192.168.1.0") and not a.contains("::c0a8:7")
    assert a.address(a.first + 5) == ipaddress.ip_address("192.168.0.5")
