"""IAM documents as CloudFormation values.

The policy files already in the repo (`cloud/*/..._policy.json`, with `${Placeholder}` names and
a `_why.json` beside each) are the single source of truth for the labeling, pipeline and label
store permissions: `from_file` turns their placeholders into `Fn::Sub` references to this
template's parameters and resources, so the template grants exactly what those files (and their
tests) say. Statements written here go through `statement`, which records why each exists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

PSEUDO = {"Partition": "AWS::Partition", "Region": "AWS::Region", "AccountId": "AWS::AccountId"}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")

# Sid -> why the statement exists (and, for any `*`, why nothing narrower works). Filled by
# `statement` and `from_file`; the template's Metadata carries it and the tests read it.
WHY: dict[str, str] = {}


def sub(text: str, names: dict[str, Any]) -> Any:
    """`text` with `${Name}` placeholders as a CloudFormation value: a plain string when it has
    none, else Fn::Sub with each name mapped to a template value (`names`) or a pseudo parameter."""
    used = [name for name in _PLACEHOLDER.findall(text) if name not in PSEUDO.values()]
    if not used:
        return text
    text = _PLACEHOLDER.sub(lambda m: "${" + PSEUDO.get(m[1], m[1]) + "}", text)
    variables = {}
    for name in used:
        if name in PSEUDO:
            continue
        if name not in names:
            raise KeyError(f"no template value for ${{{name}}}")
        variables[name] = names[name]
    return {"Fn::Sub": [text, variables]} if variables else {"Fn::Sub": text}


def _subst(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return sub(value, names)
    if isinstance(value, list):
        return [_subst(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, names) for k, v in value.items()}
    return value


def from_file(path: Path, document: str | None, names: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One IAM document of a repo policy file, its placeholders resolved; each Sid is renamed
    `prefix + Sid` and its reason taken from the `_why.json` beside the file."""
    loaded = json.loads(path.read_text())
    doc = loaded[document] if document else loaded
    why = json.loads(path.with_name(path.stem + "_why.json").read_text())["statements"]
    statements = []
    for s in doc["Statement"]:
        WHY[prefix + s["Sid"]] = why[s["Sid"]]
        statements.append(_subst({**s, "Sid": prefix + s["Sid"]}, names))
    return {"Version": "2012-10-17", "Statement": statements}


def statement(sid: str, actions: list[str], resources: Any, why: str, *, condition: dict[str, Any] | None = None,
              effect: str = "Allow") -> dict[str, Any]:
    WHY[sid] = why
    s: dict[str, Any] = {"Sid": sid, "Effect": effect, "Action": actions, "Resource": resources}
    if condition:
        s["Condition"] = condition
    return s


def document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def trust(service: str, sid: str, why: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    WHY[sid] = why
    s: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if condition:
        s["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [s]}


def role(trust_policy: dict[str, Any], policy_name: str, policy: dict[str, Any], description: str) -> dict[str, Any]:
    """An IAM role with its one inline policy. Inline, not managed: a policy that exists only for
    this role goes away with it."""
    return {"Type": "AWS::IAM::Role", "Properties": {
        "Description": description,
        "AssumeRolePolicyDocument": trust_policy,
        "Policies": [{"PolicyName": policy_name, "PolicyDocument": policy}],
    }}


def role_policy(role_name: str, policy_name: str, policy: dict[str, Any]) -> dict[str, Any]:
    """A policy attached to a role as its own resource: for a policy that names the role's own ARN
    or a resource that itself needs the role (a cycle if the policy were inside the role)."""
    return {"Type": "AWS::IAM::RolePolicy", "Properties": {
        "RoleName": {"Ref": role_name}, "PolicyName": policy_name, "PolicyDocument": policy}}


def arn(service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
    """`arn:${AWS::Partition}:service:region:account:resource`, for Fn::Sub."""
    return (f"arn:${{AWS::Partition}}:{service}:{'${AWS::Region}' if region else ''}:"
            f"{'${AWS::AccountId}' if account else ''}:{resource}")


def fsub(text: str) -> dict[str, Any]:
    return {"Fn::Sub": text}
