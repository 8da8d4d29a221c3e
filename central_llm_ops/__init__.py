"""Operator tools for Central LLM: local AWS resources, ingestion runner, DLQ redrive, queries.

Each module is a self-contained command or helper (`python -m central_llm_ops.<module>`);
the ingestion itself is the package `llm_audit` (`lambda/llm_audit/`), installed with
the project so the tools and the Lambda run the same code.
"""
