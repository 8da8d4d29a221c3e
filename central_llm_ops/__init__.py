"""Operator tools for Central LLM: local AWS resources, ingestion runner, DLQ redrive, queries.

Each module is a self-contained command or helper (`python -m central_llm_ops.<module>`);
the ingestion modules themselves live flat in `lambda/` (`llm_audit_*`) and are
installed as top-level modules so the tools and the Lambda run the same code.
"""
