"""The suite's NetworkPolicy family (networking.k8s.io/v1), self-contained: the model of
namespaces and pods (`model`), the scenarios as truth tables (`scenarios`), the truth-table
judge (`judge`) and the model's deployment and probing through the API (`deployment`).

Layers: `model` and `judge` are pure; `scenarios` uses `model`; `deployment` uses all three
and the kit's lower modules (cluster access, pod specs, the probe client). Nothing here imports
the rest of the family's callers (`conformance/test_network_policy.py`)."""
