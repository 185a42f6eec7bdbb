"""The judge: from an item's outcomes to pass, fail (a broken rule, with the failure text and
the item's properties), or could-not-test (`judge`, `failures`). Structured verdicts (issue 23
item 3) belong here.

May import: `conformance.kit.exchanges`, `conformance.kit.probes`, `conformance.kit.cluster`,
`conformance.kit.base`. The NetworkPolicy family's package `conformance.kit.netpol` sits
above this one and may use it."""
