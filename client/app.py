"""fedpath ClientApp: a thin Flower layer over `client.site.run_round`."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.identity import site_identity
from client.round_types import RoundRequest
from client.site import failure_code, run_round
from common.config.run_config import RunConfig
from common.logging_setup import setup_logging
from common.wire import instruction
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
    told = instruction.parse(msg.content["config"])  # refuses undeclared keys before anything else
    request = RoundRequest(
        run_id=context.run_id,
        server_round=told.server_round,
        arrays=from_array_record(msg.content["arrays"]),
        classes=told.classes,
        frozen_fingerprint=told.frozen_fingerprint,
        job_id=told.job_id,
        proximal_mu=0.0 if told.proximal_mu is None else told.proximal_mu,  # FedProx only; the site checks it
        bn_statistics=told.bn_statistics,  # with bn-statistics=public only
        head_input_mean=told.head_input_mean,  # where head centring applies (center-head)
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
