"""Every AWS resource of the product as one CloudFormation template, built from the code's own
definitions so that the two cannot drift apart:

    parameters.py  InfraParameters: the template's parameters, filled from cloud.yaml
    policy.py      IAM documents as CloudFormation values; the repo's policy files reused as they are
    storage.py     the KMS key and the bucket (frames, labeling, pipeline, registry, components)
    devices.py     the IoT policy, the token exchange role and alias, the fleet table and its IoT rule
    ml.py          the SageMaker roles, the feature group, the model package group
    flows.py       the Lambda handlers, both state machines, the EventBridge rule on approval
    template.py    build_template / write_template (`edge-inspect cloud infra --out DIR`)

Every IAM statement has a `Sid` and a reason (`policy.WHY`); a `*` action or resource without one
fails the tests, as does any cfn-lint or checkov finding not suppressed with a reason here.
"""
