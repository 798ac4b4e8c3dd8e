"""AWS IoT Greengrass v2: publish through the nucleus (IPC `publish_to_iot_core`) and take the
component configuration (read at start, then `subscribe_to_configuration_update`).

Chosen by itself when the process runs as a Greengrass component: the nucleus sets
`SVCUID` and the IPC socket path in the component's environment, and the thing name in
`AWS_IOT_THING_NAME`. The IPC client is built lazily, so nothing here needs Greengrass to import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.messages import Outbound
from device.sinks import Sink

log = logging.getLogger(__name__)

IPC_ENV = ("SVCUID", "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")


def running_under_greengrass(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return all(environ.get(key) for key in IPC_ENV)


def thing_name_from_environment(environ: dict[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    return environ.get("AWS_IOT_THING_NAME") or None


def connect_ipc():
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    return GreengrassCoreIPCClientV2()


class GreengrassSink(Sink):
    """Messages to AWS IoT Core through the nucleus, which spools them while the cloud is away.
    IoT Core has no retained `available` last will for IPC clients; the nucleus' own lifecycle
    status (and the stats heartbeat) tell when the component is down.

    `publish_to_iot_core` returns once the nucleus has taken the message (and, at QoS 1, spooled
    it for IoT Core), so for the outbox a returned call is the acknowledgement: delivery here is
    synchronous, and a defect event leaves the outbox file only after it."""

    name = "greengrass"

    def __init__(self, ipc_client: Any, topic_root: str, max_queued: int = 10000,
                 outbox_path: Path | None = None) -> None:
        super().__init__(max_queued=max_queued, outbox_path=outbox_path)
        self.ipc, self.root = ipc_client, topic_root
        self._failing = False

    def deliver(self, message: Outbound) -> bool:
        from awsiot.greengrasscoreipc.model import QOS

        qos = QOS.AT_LEAST_ONCE if message.qos else QOS.AT_MOST_ONCE
        try:
            self.ipc.publish_to_iot_core(topic_name=f"{self.root}/{message.subtopic}", qos=qos,
                                         payload=message.body, retain=message.retain or None)
        except Exception as exc:  # the nucleus restarting, throttling: keep the message, retry
            if not self._failing:  # retried every few ms: one line per outage, not per attempt
                log.warning("greengrass: publish to %s failed (%s); retrying until the nucleus takes it",
                            message.subtopic, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("greengrass: the nucleus takes messages again")
            self._failing = False
        return True


class GreengrassConfigSource:
    """The component configuration as a plain dict, and a callback on every update."""

    def __init__(self, ipc_client: Any) -> None:
        self.ipc = ipc_client

    def read(self) -> dict[str, Any]:
        response = self.ipc.get_configuration(key_path=[])
        return dict(response.value or {})

    def subscribe(self, on_change: Callable[[dict[str, Any]], None]) -> None:
        def on_event(event) -> None:
            try:
                on_change(self.read())
            except Exception:
                log.exception("greengrass: configuration update could not be read")

        def on_error(error: Exception) -> bool:
            log.error("greengrass: configuration stream error: %s", error)
            return False  # keep the stream open

        self.ipc.subscribe_to_configuration_update(key_path=[], on_stream_event=on_event, on_stream_error=on_error)
