"""The lab's NetworkPolicy engine (networking.k8s.io/v1), split by job:

- ``model.py``: policies, pods and namespaces as data, and ``reference_allows``, the API
  documentation's semantics read literally;
- ``compiler.py``: one node's nftables sets and chains from them (pure), rendered as ``nft``
  transactions, and runnable on a packet for tests;
- ``engine.py``: ``PolicyEngine``, which keeps every node's table in step with the API.

The API side (defaults, validation, serving) is ``netlab.api.resources.networkpolicies``.
"""
