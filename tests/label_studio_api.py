"""What the tests do at Label Studio as its people would (an admin, a labeler), through the same
REST client the backend uses plus the few calls only people make."""

from __future__ import annotations

from typing import Any

from cloud.labeling.label_studio_api import LabelStudioApi

_PERSONAL_ACCESS_TOKENS: dict[str, str] = {}  # (server, person) -> their token, for the session


class LabelStudioPerson(LabelStudioApi):
    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token, timeout_s=60)

    def projects(self) -> list[dict[str, Any]]:
        return list(self.get("api/projects/", page_size=1000).get("results") or [])

    def delete_project(self, project_id: int) -> None:
        self.delete(f"api/projects/{project_id}/")

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        return list(self.get("api/tasks/", project=project_id, fields="all", page_size=1000).get("tasks") or [])

    def annotate(self, task_id: int, result: list[dict[str, Any]], *, ground_truth: bool = False,
                 was_cancelled: bool = False, completed_by: int | None = None, lead_time: float = 4.2) -> int:
        body = {"result": result, "ground_truth": ground_truth, "was_cancelled": was_cancelled, "lead_time": lead_time}
        if completed_by is not None:
            body["completed_by"] = completed_by
        return self.post(f"api/tasks/{task_id}/annotations/", body)["id"]

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"api/tasks/{task_id}/annotations/"))

    def update_annotation(self, annotation_id: int, **fields: Any) -> None:
        self.patch(f"api/annotations/{annotation_id}/", fields)

    def predictions(self, project_id: int) -> list[dict[str, Any]]:
        return list(self.get("api/predictions/", project=project_id))

    def create_user(self, username: str, email: str, password: str) -> dict[str, Any]:
        return self.post("api/users/", {"username": username, "email": email, "password": password})

    def create_personal_access_token(self) -> str:
        """The user's Personal Access Token, made at the first call: Label Studio refuses a user a
        second one (409) while the first is valid, so the tests of a session share it."""
        key = f"{self.http.base_url} {self.http.headers.get('Authorization')}"
        if key not in _PERSONAL_ACCESS_TOKENS:
            _PERSONAL_ACCESS_TOKENS[key] = self.post("api/token/", None)["token"]
        return _PERSONAL_ACCESS_TOKENS[key]
