"""OpenELB reimplemented in Python: load balancer IPs for bare-metal Kubernetes."""

__version__ = "0.1.0"
