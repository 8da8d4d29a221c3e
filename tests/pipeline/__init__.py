"""End-to-end tests of the no-Docker pipeline command, `central-llm-local-stack`."""
