"""Generates the whole stack's CloudFormation template from the deployable JSON files.

One source of truth: `ecs/task-definition.json`, the IAM policies in
`ecs/policies/` and the table definition `lambda/audit_table.json` are the
files operators and the Lambda's tests read; the template
`ecs/central-llm-stack.json` is rendered from them and never edited by hand.
`python -m ecs.stackgen --check` fails when the checked-in template differs
from a fresh render, so the files and the template cannot drift.

Invariants:
- Rendering is pure and deterministic: same inputs, byte-identical output.
- Strings in the source files may use CloudFormation `Fn::Sub` placeholders
  (`${AWS::Region}`, `${AuditBucketName}`, `${TaskRole.Arn}`); every such string
  becomes an `Fn::Sub` in the template and every placeholder must name a
  parameter, a resource or a pseudo parameter of the template (a test checks).
- Names from DESIGN.md are parameter defaults, so a stack can be deployed
  under other names (tests, a second environment) without editing the files.
"""

from ecs.stackgen.template import render_template

__all__ = ["render_template"]
