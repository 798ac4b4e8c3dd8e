"""The deployment flow on AWS as a Step Functions state machine (Amazon States Language).

EventBridge starts it when a model package becomes Approved. Each Task runs one handler of
`cloud/deploy/handlers.py`, which calls the same functions as the on-site flow (`rollout.py`):
prepare the shipment (quantize under the fidelity gate, create the component version), deploy to
the canary group, judge the canary on its devices' messages until it promotes or rolls back, then
the fleet, then mark the version deployed (production: what the fleet runs). A version whose
own bytes are refused (CONTENT_ERRORS: the Lambda's errorType, the Python exception's class) is
marked ship-failed with the reason, and Rejected; any other failure (a timeout, throttling, an
outage) leaves the version Approved: before the canary swapped it just fails, after it the stages
deployed are rolled back without rejecting the version (Undo states). A rate that could not be
measured rolls back without rejecting too (the judgement says `unmeasured`).
The waiting is the state machine's (Wait states cost nothing); no Lambda sleeps.

The registry is written by one function, the rollback function's (its role alone may update a
model package): marking a version deployed or ship-failed goes through it too, by a `mark` field
in its payload (handlers.lambda_rollback).

Coverage (promotion.py): on AWS the IoT rule writes every device message into the fleet table for
as long as the stack exists, so the window before the swap is always measured; the judge needs no
baseline step of its own (DynamoFleetStore.covered).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.labeling.step_functions import _LAMBDA_ARN, LAMBDA_RETRY

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
FAILED, ROLLED_BACK, DONE = "DeploymentFailed", "RolledBack", "Deployed"
MARK_DEPLOYED, MARK_SHIP_FAILED, NOT_SHIPPED = "MarkDeployed", "MarkShipFailed", "NotShipped"
CATCH = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": FAILED}]
# the version's own bytes are wrong (deployer.ShipmentRefused, device.detector.ModelError): it is marked
CONTENT_ERRORS = ["ShipmentRefused", "ModelError"]
SHIP_CATCH = [{"ErrorEquals": CONTENT_ERRORS, "ResultPath": "$.failure", "Next": MARK_SHIP_FAILED}, *CATCH]


def _undo_catch(stage: str) -> list[dict[str, Any]]:
    """A failure once the canary swapped (not the version's fault): roll back, leave it Approved."""
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": f"Undo{stage.capitalize()}"}]


class DeployMachineSettings(BaseModel):
    """The deployed Lambda functions, each running one handler of cloud/deploy/handlers.py."""

    model_config = ConfigDict(extra="forbid")

    prepare_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_prepare")
    deploy_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_deploy")
    judge_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_judge")
    rollback_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_rollback "
                                                                    "(also marks a version deployed or ship-failed)")
    poll_seconds: int = Field(60, ge=5, le=3600, description="how often a stage is judged while it waits")


def _task(function_arn: str, payload: dict[str, str], result_path: str, next_state: str,
          catch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function_arn, "Payload": payload},
        "ResultSelector": {"result.$": "$.Payload"},  # drop lambda:invoke's envelope
        "ResultPath": result_path,
        "Retry": [LAMBDA_RETRY],
        "Catch": catch or CATCH,
        "Next": next_state,
    }


def _stage(settings: DeployMachineSettings, stage: str, rolled_back: str, after_promote: str) -> dict[str, Any]:
    """Deploy -> wait -> judge -> (wait again | promote | roll back), for one stage. `rolled_back`:
    the deployments a rollback here undoes (the fleet's undoes the canary's too)."""
    name = stage.capitalize()
    # the fleet's deployment failing leaves the canary on the new model: undo the canary
    deploy_catch = SHIP_CATCH if stage == "canary" else _undo_catch("canary")
    return {
        f"Deploy{name}": _task(settings.deploy_function, {"prepared.$": "$.prepared.result", "stage": stage},
                               f"$.{stage}", f"Wait{name}", deploy_catch),
        f"Wait{name}": {"Type": "Wait", "Seconds": settings.poll_seconds, "Next": f"Judge{name}"},
        f"Judge{name}": _task(settings.judge_function, {"deployment.$": f"$.{stage}.result"}, f"$.{stage}_verdict",
                              f"{name}Verdict", _undo_catch(stage)),
        f"{name}Verdict": {
            "Type": "Choice",
            "Choices": [
                {"Variable": f"$.{stage}_verdict.result.verdict", "StringEquals": "wait", "Next": f"Wait{name}"},
                {"Variable": f"$.{stage}_verdict.result.verdict", "StringEquals": "promote", "Next": after_promote},
                {"Variable": f"$.{stage}_verdict.result.verdict", "StringEquals": "rollback",
                 "Next": f"Rollback{name}"},
            ],
            "Default": "UnknownVerdict",
        },
        f"Rollback{name}": _task(settings.rollback_function,
                                 {"deployments.$": rolled_back, "reason.$": f"$.{stage}_verdict.result.reason",
                                  "unmeasured.$": f"$.{stage}_verdict.result.judgement.unmeasured"},
                                 "$.rollback", ROLLED_BACK),
        f"Undo{name}": _task(settings.rollback_function,
                             {"deployments.$": rolled_back, "failure.$": "$.failure", "reject": False},
                             "$.undone", FAILED),
    }


def deployment_state_machine(settings: DeployMachineSettings) -> dict[str, Any]:
    """Input: the EventBridge event of a model package state change (the rule passes it whole)."""
    return {
        "Comment": "edge-inspect: an approved model version -> shipment (fidelity-gated INT8 or FP32) -> canary "
                   "-> fleet, rolled back where its devices refuse it or its alert rate leaves the band",
        "StartAt": "Prepare",
        "States": {
            "Prepare": _task(settings.prepare_function, {"event.$": "$"}, "$.prepared", "DeployCanary", SHIP_CATCH),
            **_stage(settings, "canary", "States.Array($.canary.result)", "DeployFleet"),
            **_stage(settings, "fleet", "States.Array($.canary.result, $.fleet.result)", MARK_DEPLOYED),
            MARK_DEPLOYED: _task(settings.rollback_function, {"mark": "deployed", "deployment.$": "$.fleet.result"},
                                 "$.marked", DONE),
            MARK_SHIP_FAILED: _task(settings.rollback_function,
                                    {"mark": "ship-failed", "event.$": "$", "failure.$": "$.failure"}, "$.marked",
                                    NOT_SHIPPED),
            NOT_SHIPPED: {"Type": "Fail", "Error": "ShipFailed",
                          "Comment": "the version could not be shipped; it is marked ship-failed and Rejected"},
            DONE: {"Type": "Succeed", "Comment": "every device of the fleet serves the new model; the registry "
                                                 "marks it deployed (production)"},
            ROLLED_BACK: {"Type": "Fail", "Error": "RolledBack",
                          "Comment": "a stage was rolled back to the previous model; the version is marked Rejected "
                                      "unless its rate could not be measured"},
            "UnknownVerdict": {"Type": "Fail", "Error": "UnknownVerdict", "Comment": "the judge answered neither "
                               "wait, promote nor rollback"},
            FAILED: {"Type": "Fail", "ErrorPath": "$.failure.Error", "CausePath": "$.failure.Cause",
                     "Comment": "a step failed after its retries (any stage deployed was undone first); the "
                                 "version stays Approved: start the machine again to retry"},
        },
    }


def deployment_state_machine_json(settings: DeployMachineSettings) -> str:
    return json.dumps(deployment_state_machine(settings), indent=2)
