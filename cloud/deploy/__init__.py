"""Deployment: an approved registry version -> a shipment (fidelity-gated INT8, else FP32) -> the
canary lines -> the fleet, promoted or rolled back on what the devices themselves report.

    settings.py       the `deploy` section of cloud.yaml
    shipping.py       the shipment: the model file the lines get, its card, and why that precision
    signing.py        the key pair that signs shipped cards (`cloud keys`), and the signing itself
    observations.py   device messages (model, notices, errors, events) -> the fleet store
    fleet_store.py    the fleet store: SQLite on site, DynamoDB on AWS (written by an IoT rule)
    watcher.py        the MQTT subscriber that feeds the fleet store on site
    promotion.py      the rule that promotes a stage, waits, or rolls it back (no backend)
    local.py          on site: atomic rename into each line's watched model path
    greengrass.py     AWS: component versions and Greengrass deployments to thing groups
    rollout.py        the flow, shared: prepare -> canary -> judge -> fleet -> judge
    step_functions.py the same flow as a Step Functions state machine; handlers.py its Lambdas
"""
