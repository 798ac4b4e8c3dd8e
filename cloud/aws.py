"""One way to call AWS for every backend: botocore's errors become the capability's own error
type, whose message names the call and AWS's code and message (botocore never puts credentials
in those), on one line for the CLI."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError


class AwsError(Exception):
    """Mixed into each capability's error (`class AwsCallError(AwsError, LabelStoreError)`), so a
    caller catches the capability's error and can still read `call` and `code`."""

    def __init__(self, call: str, code: str, message: str) -> None:
        super().__init__(f"{call} failed: {code}: {message}")
        self.call, self.code = call, code


def aws_call(client: Any, operation: str, error: type[AwsError], **params: Any) -> dict[str, Any]:
    """`client.operation(**params)`, with botocore's errors turned into one `error`."""
    name = f"{client.meta.service_model.service_name}.{operation}"
    try:
        return getattr(client, operation)(**params)
    except ClientError as exc:
        details = exc.response.get("Error", {})
        raise error(name, details.get("Code", "Unknown"), details.get("Message", str(exc))) from exc
    except BotoCoreError as exc:  # ParamValidationError, NoCredentialsError, connection errors
        raise error(name, type(exc).__name__, " ".join(str(exc).split())) from exc
