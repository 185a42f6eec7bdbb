"""What the suite knows of the cluster through the Kubernetes API: API access with retries
(`api`), waiting on lists (`waiting`), permissions, nodes and which are tested, IP families,
discovery, cluster facts for the report, IP ranges and CIDR analysis, pair planning, the run
namespace and its lease, DNS resolvers.

May import: `conformance.kit.base`. Nothing here starts a probe or judges a rule."""
