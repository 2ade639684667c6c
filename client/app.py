"""fedpath ClientApp: a thin Flower layer over `client.site.run_round`."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.identity import site_identity
from client.site import RoundRequest, run_round
from common.config import RunConfig
from common.logging_setup import setup_logging
from common.records import from_array_record, to_array_record

app = ClientApp()
log = logging.getLogger("fedpath.client")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this site's private data and reply with trainable weights and aggregates."""
    setup_logging()
    config = RunConfig.from_mapping(context.run_config)
    identity = site_identity(context.node_config, config, context.run_id)
    round_config = msg.content["config"]
    request = RoundRequest(
        run_id=context.run_id,
        server_round=int(round_config["server-round"]),
        arrays=from_array_record(msg.content["arrays"]),
        classes=[str(c) for c in round_config["classes"]],
        frozen_fingerprint=str(round_config["frozen-fingerprint"]),
    )
    result = run_round(identity, config, request)
    content = RecordDict(
        {
            "metrics": MetricRecord(result.metrics),
            "site": ConfigRecord(
                {
                    "site-id": result.site_id,
                    "status": result.status,
                    "reason": result.reason,
                    "class-counts": [int(c) for c in result.class_counts],
                }
            ),
        }
    )
    if result.update is not None:
        content["arrays"] = to_array_record(result.update)
    return Message(content=content, reply_to=msg)
