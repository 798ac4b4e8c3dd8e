"""Label Studio's REST API, the calls the backend needs, over httpx.

Why not `label-studio-sdk`: it pins `opencv-python-headless<4.13` and `numpy<2.3`, which cannot
share a virtualenv with the device's OpenCV 5. The calls are few and plain JSON; the paths,
parameters and authentication are the SDK's own (label-studio-sdk 2.1.2):

- a legacy API token is sent as `Authorization: Token <t>`; a Personal Access Token is a JWT
  refresh token, exchanged at `POST /api/token/refresh/` for an access token sent as `Bearer`.
  The exchange happens at the first call, not when the client is made, so a server that is down
  when `cloud serve` starts is a failed call the loop retries, not a failed start. An access token
  lives minutes (Simple JWT's default: 5): a 401 is answered by one new exchange and one retry of
  the call (safe: the server refused it, so it did nothing);
- otherwise every call runs once (no retries): a POST retried after the server did it would
  import a batch twice, and the labeling loop retries the whole step at its next round;
- an error reply becomes `ApiError(status, body)`; its text never holds a header (Label Studio
  sets a session cookie on every reply) or the token.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status_code: int, body: Any) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code, self.body = status_code, body


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    total: int | None


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (the server verifies it), or None for a legacy token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioApi:
    def __init__(self, base_url: str, token: str, timeout_s: float) -> None:
        """No call is made here (see the module's note on the exchange)."""
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", timeout=timeout_s, follow_redirects=False)
        claims = jwt_claims(token)
        self._refresh: str | None = None
        if claims is None:
            self.http.headers["Authorization"] = f"Token {token}"
        elif claims.get("token_type") == "refresh":
            self._refresh = token  # traded for an access token at the first call
        else:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def _renew(self) -> None:
        """A new access token for the Personal Access Token. The stale one is not sent with the
        request: an invalid Bearer is refused even where no authentication is needed."""
        self.http.headers.pop("Authorization", None)
        access = self._reply(self.http.request("POST", "api/token/refresh/", json={"refresh": self._refresh}))
        if not isinstance(access, dict) or not access.get("access"):
            raise ApiError(502, {"detail": "the token refresh reply has no access token"})
        self.http.headers["Authorization"] = f"Bearer {access['access']}"

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._refresh is not None and "Authorization" not in self.http.headers:
            self._renew()
        reply = self.http.request(method, path, **kwargs)
        if reply.status_code == 401 and self._refresh is not None:  # the access token expired
            self._renew()
            reply = self.http.request(method, path, **kwargs)
        return self._reply(reply)

    @staticmethod
    def _reply(reply: httpx.Response) -> Any:
        try:
            body = reply.json() if reply.content else None
        except ValueError:
            body = reply.text[:300]
        if reply.status_code >= 400:
            raise ApiError(reply.status_code, body)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any) -> Any:
        return self._send("POST", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self._send("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    # -- the backend's calls ------------------------------------------------------------------------

    def projects_page(self, title: str, page: int, page_size: int) -> Page:
        reply = self.get("api/projects/", title=title, page=page, page_size=page_size)
        return Page(list(reply.get("results") or []), reply.get("count"))

    def create_project(self, title: str, label_config: str, description: str) -> dict[str, Any]:
        return self.post("api/projects/", {"title": title, "label_config": label_config, "description": description})

    def project(self, project_id: int) -> dict[str, Any]:
        return self.get(f"api/projects/{int(project_id)}/")

    def update_project(self, project_id: int, label_config: str) -> dict[str, Any]:
        return self.patch(f"api/projects/{int(project_id)}/", {"label_config": label_config})

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        return self.post(f"api/projects/{int(project_id)}/import", tasks)

    def tasks_page(self, project_id: int, query: str, page: int, page_size: int) -> Page:
        reply = self.get("api/tasks/", project=int(project_id), query=query, fields="all", page=page,
                         page_size=page_size)
        return Page(list(reply.get("tasks") or []), reply.get("total"))

    def users(self) -> list[dict[str, Any]]:
        reply = self.get("api/users/")
        return list(reply.get("results", []) if isinstance(reply, dict) else reply or [])
