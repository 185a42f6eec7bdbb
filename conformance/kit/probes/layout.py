"""Where the probe agent (the program) sits in a probe pod: the ConfigMap that ships it, the
directory it is mounted at, its client's path (every exec and startup probe runs the client,
not the agent) and each container's control socket. Pure constants: the pod specs mount them,
the probe client execs them."""

AGENT_CONFIGMAP = "netconform-agent"
AGENT_KEY = "agent.py"
AGENT_DIR = "/netconform"
AGENT_PATH = f"{AGENT_DIR}/{AGENT_KEY}"
#: The agent's client (``call``, ``ping``): every exec and startup probe runs it, not the agent.
CLIENT_KEY = "client.py"
CLIENT_PATH = f"{AGENT_DIR}/{CLIENT_KEY}"


def agent_socket(container: str) -> str:
    """Control socket of the agent in ``container``: distinct per container, so two agents of
    one pod never meet even where containers share /tmp."""
    return f"/tmp/netconform-agent-{container}.sock"
