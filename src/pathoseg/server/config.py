"""The settings of one running app (``pathoseg serve`` fills them from its options); light to
import, so the command line can show the defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from pathoseg.engine.settings import RoundConfig
from pathoseg.server.storage import DEFAULT_TOKEN_DAYS
from pathoseg.server.vocabulary import MAX_UPLOAD_BYTES

DEAD_AFTER = 60.0  # seconds without a heartbeat after which a running job's worker counts as dead

# The largest upload as base64 in a JSON mask body, plus room for the rest of the request.
MAX_BODY_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 2**20


@dataclass(frozen=True)
class WorkerSettings:
    """What the app's worker adds to the one retrain round (``round``, the code and defaults
    the HITL study measures; :mod:`pathoseg.engine.rounds`): the device it trains and predicts
    on, and the backend of its prediction passes (torch, or onnx: ONNX Runtime fp32, an export
    cached beside each model version)."""

    round: RoundConfig = field(default_factory=RoundConfig)
    device: str | None = None
    predict_backend: str = "torch"


@dataclass
class ServerConfig:
    project: str
    db_url: str | None = None
    retrain_every: int = 5  # start a retrain automatically after this many new corrections (0: never)
    train: WorkerSettings = field(default_factory=WorkerSettings)
    max_body_bytes: int = MAX_BODY_BYTES  # larger request bodies get 413 before auth or parsing
    token_days: int = DEFAULT_TOKEN_DAYS  # lifetime of tokens issued through the API
    login_attempts: int = 10  # wrong tokens from one address within login_window seconds, then 429
    login_window: float = 60.0
    worker: bool = True  # run queued jobs in a thread of the server (False: only `pathoseg worker`s run them)
    job_timeout: float = DEAD_AFTER  # a running job without a heartbeat this long is requeued (once)
