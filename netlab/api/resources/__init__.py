"""Each resource's rules, as kube-apiserver's registry keeps them per resource (a ``rest``
storage with its strategy): defaults, validation, admission and what a write sets off. The
generic verbs (``netlab.api.rest``) call them through one small interface, ``Strategy``
(``strategy.py``); ``registry.py`` names the strategy of every served resource. A resource
with no rules of its own (configmaps, events, endpointslices, nodes) has the plain one."""
