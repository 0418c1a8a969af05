"""NodeProxy mode: a Service exposed through the nodes' own addresses (klipper-lb style)."""
