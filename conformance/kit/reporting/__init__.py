"""What a run reports: per-check results and `summary.json` (`results`), the rule table
(`rules`), the matrices, the HTML report (`html`) and the `netconform-report` command
(`command`).

May import: `conformance.kit.verdicts` (and, through it, every lower package: exchanges,
probes, cluster, base) and `conformance.kit.netpol`."""
