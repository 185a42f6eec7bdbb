"""Pieces of the small Python servers the lab tests run in their pods (``python3 -c``)."""

from __future__ import annotations

#: ``listener(kind, port)``: a socket of ``kind`` bound to ``port`` on every address of both
#: families (one IPv6 socket that takes IPv4 too).
DUAL_STACK_LISTENER = r"""
def listener(kind, port):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
"""
