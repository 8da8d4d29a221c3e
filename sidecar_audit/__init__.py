"""Central LLM audit sidecar: a transparent proxy in front of vLLM that audits every call."""

__version__ = "0.1.0"
