"""fedpath ClientApp: a thin Flower layer over `client.site.run_round`."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.identity import site_identity
from client.round_types import RoundRequest
from client.site import failure_code, run_round
from common.config.run_config import RunConfig
from common.config.strategies import PROXIMAL_MU_KEY
from common.logging_setup import setup_logging
from common.model.bn_statistics import TRAIN_CONFIG_KEY as BN_STATISTICS_KEY
from common.wire import reply as wire
from common.wire.records import from_array_record, to_array_record

app = ClientApp()
log = logging.getLogger("fedpath.client")


class SiteError(RuntimeError):
    """What a site's failure looks like on the wire: a fixed code and sentence, nothing else.

    Flower sends the text of a ClientApp's exception to the coordinator; data errors name
    files (patient identifiers in many hospitals) and counts. The full error stays in the
    site's own log; only `common.wire.reply.failure_text(code)` crosses the wire.
    """


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this site's private data and reply with what `common.wire.reply` declares."""
    setup_logging()
    try:
        return _train(msg, context)
    except Exception as err:  # noqa: BLE001 - every failure is reported, sanitised
        code = failure_code(err)
        log.error("this site's round failed (%s): %s: %s", code, type(err).__name__, err, exc_info=True)
        raise SiteError(wire.failure_text(code)) from None


def _train(msg: Message, context: Context) -> Message:
    config = RunConfig.from_mapping(context.run_config)
    identity = site_identity(context.node_config, config, context.run_id)
    round_config = msg.content["config"]
    request = RoundRequest(
        run_id=context.run_id,
        server_round=int(round_config["server-round"]),
        arrays=from_array_record(msg.content["arrays"]),
        classes=[str(c) for c in round_config["classes"]],
        frozen_fingerprint=str(round_config["frozen-fingerprint"]),
        job_id=int(round_config["job-id"]) if "job-id" in round_config else None,
        proximal_mu=round_config.get(PROXIMAL_MU_KEY, 0.0),  # sent by Flower's FedProx only; the site checks it
        bn_statistics=round_config.get(BN_STATISTICS_KEY),  # with bn-statistics=public only
    )
    result = run_round(identity, config, request)
    records = wire.encode(result.reply)
    content = RecordDict({
        wire.METRICS: MetricRecord(records[wire.METRICS]),
        wire.SITE: ConfigRecord(records[wire.SITE]),
    })
    if wire.DIAGNOSTICS in records:
        content[wire.DIAGNOSTICS] = ConfigRecord(records[wire.DIAGNOSTICS])
    if result.update is not None:
        content[wire.ARRAYS] = to_array_record(result.update)
    return Message(content=content, reply_to=msg)
