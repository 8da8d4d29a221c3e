"""The ingestion Lambda `llm-audit-ingest`: audit objects in S3 -> items in DynamoDB.

Handler `llm_audit.ingest.handler`. The package imports only the standard
library and boto3/botocore (which the python3.12 runtime provides), so the
function's zip is this folder and nothing else (`scripts/package-lambda.sh`).
Importing it does no work; clients are made on the first invocation.
"""
