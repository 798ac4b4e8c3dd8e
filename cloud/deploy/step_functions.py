"""The deployment flow on AWS as a Step Functions state machine (Amazon States Language).

EventBridge starts it when a model package becomes Approved. Each Task runs one handler of
`cloud/deploy/handlers.py`, which calls the same functions as the on-site flow (`rollout.py`):
prepare the shipment (quantize under the fidelity gate, create the component version), deploy to
the canary group, judge the canary on its devices' messages until it promotes or rolls back, then
the fleet. The waiting is the state machine's (Wait states cost nothing); no Lambda sleeps.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cloud.labeling.step_functions import _LAMBDA_ARN, LAMBDA_RETRY

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
FAILED, ROLLED_BACK, DONE = "DeploymentFailed", "RolledBack", "Deployed"
CATCH = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": FAILED}]


class DeployMachineSettings(BaseModel):
    """The deployed Lambda functions, each running one handler of cloud/deploy/handlers.py."""

    model_config = ConfigDict(extra="forbid")

    prepare_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_prepare")
    deploy_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_deploy")
    judge_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_judge")
    rollback_function: str = Field(pattern=_LAMBDA_ARN, description="handler: cloud.deploy.handlers.lambda_rollback")
    poll_seconds: int = Field(60, ge=5, le=3600, description="how often a stage is judged while it waits")


def _task(function_arn: str, payload: dict[str, str], result_path: str, next_state: str) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function_arn, "Payload": payload},
        "ResultSelector": {"result.$": "$.Payload"},  # drop lambda:invoke's envelope
        "ResultPath": result_path,
        "Retry": [LAMBDA_RETRY],
        "Catch": CATCH,
        "Next": next_state,
    }


def _stage(settings: DeployMachineSettings, stage: str, rolled_back: str, after_promote: str) -> dict[str, Any]:
    """Deploy -> wait -> judge -> (wait again | promote | roll back), for one stage. `rolled_back`:
    the deployments a rollback here undoes (the fleet's undoes the canary's too)."""
    name = stage.capitalize()
    return {
        f"Deploy{name}": _task(settings.deploy_function, {"prepared.$": "$.prepared.result", "stage": stage},
                               f"$.{stage}", f"Wait{name}"),
        f"Wait{name}": {"Type": "Wait", "Seconds": settings.poll_seconds, "Next": f"Judge{name}"},
        f"Judge{name}": _task(settings.judge_function, {"deployment.$": f"$.{stage}.result"}, f"$.{stage}_verdict",
                              f"{name}Verdict"),
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
                                 {"deployments.$": rolled_back, "reason.$": f"$.{stage}_verdict.result.reason"},
                                 "$.rollback", ROLLED_BACK),
    }


def deployment_state_machine(settings: DeployMachineSettings) -> dict[str, Any]:
    """Input: the EventBridge event of a model package state change (the rule passes it whole)."""
    return {
        "Comment": "edge-inspect: an approved model version -> shipment (fidelity-gated INT8 or FP32) -> canary "
                   "-> fleet, rolled back where its devices refuse it or its alert rate leaves the band",
        "StartAt": "Prepare",
        "States": {
            "Prepare": _task(settings.prepare_function, {"event.$": "$"}, "$.prepared", "DeployCanary"),
            **_stage(settings, "canary", "States.Array($.canary.result)", "DeployFleet"),
            **_stage(settings, "fleet", "States.Array($.canary.result, $.fleet.result)", DONE),
            DONE: {"Type": "Succeed", "Comment": "every device of the fleet serves the new model"},
            ROLLED_BACK: {"Type": "Fail", "Error": "RolledBack",
                          "Comment": "a stage was rolled back to the previous model; the registry version is marked"},
            "UnknownVerdict": {"Type": "Fail", "Error": "UnknownVerdict", "Comment": "the judge answered neither "
                               "wait, promote nor rollback"},
            FAILED: {"Type": "Fail", "ErrorPath": "$.failure.Error", "CausePath": "$.failure.Cause",
                     "Comment": "a step failed after its retries"},
        },
    }


def deployment_state_machine_json(settings: DeployMachineSettings) -> str:
    return json.dumps(deployment_state_machine(settings), indent=2)
