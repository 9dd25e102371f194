# relay/reload.apply_config on a live in-process Service: what a reload changes in place.
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest

from relay.config.load import config_from_dict, suppression_rules
from relay.config.reload import apply_config
from relay.observe.logsink import LogWriter
from relay.service import Service


async def test_apply_config_changes_routes_policy_and_log(
    relay_service: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc: Service = await relay_service({"delivery": {"routes": {"a.test": "127.0.0.1:1"}}})
    assert svc.delivery is not None and svc.store is not None and svc.pipeline is not None
    new = dataclasses.replace(
        svc.config,
        delivery=dataclasses.replace(svc.config.delivery, routes={"B.test": "127.0.0.1:2"}),
        policy=config_from_dict(
            {"policy": {"hard_suppress_days": 5, "soft_bounce": "pass"}}
        ).policy,
        log=dataclasses.replace(svc.config.log, format="json", file=str(tmp_path / "m.log")),
    )
    with caplog.at_level(logging.WARNING, logger="relay.config.reload"):
        changed = apply_config(svc, new)
    assert changed == ["delivery.routes", "policy", "log"]
    assert "need a restart" not in caplog.text
    assert svc.delivery.resolver.routes == {"b.test": "127.0.0.1:2"}
    assert svc.store.rules == suppression_rules(new.policy)
    assert svc.pipeline.soft_bounce == "pass"
    (writer,) = [c for c in svc.components if isinstance(c, LogWriter)]
    assert writer.cfg.format == "json" and (tmp_path / "m.log").exists()
    assert svc.config.delivery.routes == {"B.test": "127.0.0.1:2"}

    # A change that needs a restart is named, and not applied.
    listen = dataclasses.replace(svc.config.server, listen=("127.0.0.1:1",))
    with caplog.at_level(logging.WARNING, logger="relay.config.reload"):
        assert apply_config(svc, dataclasses.replace(svc.config, server=listen)) == []
    assert "changes to [server] need a restart" in caplog.text
    assert svc.config.server.listen == ("127.0.0.1:0",)
