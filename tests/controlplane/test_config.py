"""The config file: validation errors name the file and the key; the README's example parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.config import BUFFER_REQUESTS_LINE, FORWARD_FOR_LINE, ConfigError, load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "banditctl.yaml"
    p.write_text(text)
    return p


def _refusal(path) -> str:
    """The text of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def test_readme_example_config_is_valid(tmp_path):
    block = re.search(r"## Configuration.*?```yaml\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its configuration example"
    cfg = load_config(_write(tmp_path, block.group(1)))
    assert cfg.route_arms("cheap") == ("llama-8b", "llama-8b:sql")
    assert cfg.route_arms("auto") == ("llama-8b", "llama-8b:sql", "gpt-4o")
    assert cfg.route_arms("gpt-4o") == ("gpt-4o",)
    assert cfg.base_models == ("llama-8b", "gpt-4o")
    assert cfg.objective.weights["cost_usd"] == -30


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "arms: [{name: a, model: a}]\nlearner: {kind: linucb, alpha: -1}\n",
            "learner.linucb.alpha",
        ),
        ("arms: [{name: a, model: a}]\nlearner: {kind: nope}\n", "learner"),
        ("arms: [{name: a, model: a, backend: openai}]\n", "needs base_url"),
        ("arms: [{name: a, model: a}]\nroutes: {r: [b]}\n", "unknown arm"),
        ("arms: []\n", "arms"),
        ("arms: [{name: a, model: a}]\nobjective: {weights: {accuracy: 1}}\n", "objective.weights"),
        ("arms: [{name: a, model: a}]\ngateway: {replicas: 0}\n", "gateway.replicas"),
        ("arms: [{name: a, model: a}]\ntypo_key: 1\n", "typo_key"),
        ("arms: [{name: a, model: a, backend: hf, max_new_tokens: 0}]\n", "arms.0.max_new_tokens"),
        ("- just a list\n", "expected a mapping"),
        ("arms: [{name: a, model: a}\n", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path, text, needle):
    path = _write(tmp_path, text)
    msg = _refusal(path)
    assert str(path) in msg and needle in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_cache_embeds_the_simulators_policy_config(tmp_path):
    from cache_manager.config import LruConfig, PolarConfig, PolarPlusConfig

    arms = "arms: [{name: m, model: m}, {name: 'm:a', model: m, adapter: a}]\n"
    assert isinstance(load_config(_write(tmp_path, arms)).cache.policy, LruConfig)
    cfg = load_config(_write(tmp_path, arms + "cache: {policy: polar, slots_per_replica: 2}\n"))
    assert isinstance(cfg.cache.policy, PolarConfig) and cfg.cache.policy.epoch_s == 10.0
    assert cfg.cache.slots_per_replica == 2 and cfg.cache_planned
    text = arms + "cache:\n  policy: {kind: polar+, initial_epoch_s: 10, max_epoch_s: 40}\n"
    cfg = load_config(_write(tmp_path, text))
    assert isinstance(cfg.cache.policy, PolarPlusConfig)
    assert (cfg.cache.policy.initial_epoch_s, cfg.cache.policy.max_epoch_s) == (10, 40)
    assert not load_config(
        _write(tmp_path, "arms: [{name: m, model: m}]\ncache: {policy: polar}\n")
    ).cache_planned


@pytest.mark.parametrize(
    ("cache", "needle"),
    [
        ("{policy: {kind: polar, epoch_s: 0}}", "cache.policy.polar.epoch_s"),
        ("{policy: {kind: polar, epoch: 5}}", "cache.policy.polar.epoch"),
        ("{policy: oracle}", "cache: Value error, policy 'oracle' is for the simulator"),
        ("{policy: lfu}", "serve one of lru, polar, polar+"),
        ("{policy: nope}", "cache.policy"),
        ("{epoch_s: 10}", "cache.epoch_s"),
        ("{slots_per_replica: 0}", "cache.slots_per_replica"),
    ],
)
def test_cache_errors_name_the_key(tmp_path, cache, needle):
    path = _write(tmp_path, f"arms: [{{name: a, model: a, adapter: x}}]\ncache: {cache}\n")
    msg = _refusal(path)
    assert needle in msg, msg


def test_planned_cache_needs_one_replica_per_pool(tmp_path):
    text = "arms: [{name: a, model: a, adapter: x}]\npools: {replicas: 2}\ncache: {policy: polar}\n"
    with pytest.raises(ConfigError, match="set pools.replicas to 1"):
        load_config(_write(tmp_path, text))


def test_hf_arms(tmp_path):
    cfg = load_config(
        _write(
            tmp_path,
            "arms:\n"
            "  - {name: smol, model: smol, backend: hf, joules_per_token: 0.1}\n"
            "  - {name: smol:ahoy, model: smol, adapter: ahoy-r4, backend: hf,\n"
            "     model_path: /models/smol.gguf, adapter_dir: /adapters, max_new_tokens: 32,\n"
            "     device: cpu}\n",
        )
    )
    base, ahoy = cfg.arms
    assert (base.backend, base.model_path, base.adapter_dir, base.max_new_tokens) == (
        "hf",
        None,
        None,
        128,
    )
    assert (ahoy.model_path, ahoy.adapter_dir, ahoy.max_new_tokens, ahoy.device) == (
        "/models/smol.gguf",
        "/adapters",
        32,
        "cpu",
    )
    assert cfg.adapter_arms == {"smol:ahoy": "ahoy-r4"} and cfg.base_models == ("smol",)


def test_greenserv_reads_the_featurizers_task_slots(tmp_path):
    """A greenserv learner that leaves context_indices at its default reads the intercept
    and the featurizer's task slots, however many; one given explicitly is kept."""
    from learners import make_learner
    from learners.config import GreenServConfig

    tasks = ", ".join(f"t{i}" for i in range(12))
    base = "arms: [{name: a, model: a}, {name: b, model: b}]\n"
    wide = f"featurizer: {{dim: 80, task_slots: 12, tasks: [{tasks}]}}\n"
    cfg = load_config(_write(tmp_path, base + wide + "learner: {kind: greenserv}\n"))
    assert cfg.featurizer.task_slots == 12
    assert cfg.learner.context_indices == cfg.featurizer.task_view == tuple(range(13))
    learner = make_learner(cfg.learner, cfg.featurizer.dim)
    assert (
        learner.state_bytes() != make_learner(GreenServConfig(), cfg.featurizer.dim).state_bytes()
    )
    explicit = "learner: {kind: greenserv, context_indices: [0, 1, 2]}\n"
    assert load_config(_write(tmp_path, base + wide + explicit)).learner.context_indices == (
        0,
        1,
        2,
    )
    # a candidate's greenserv, started fresh or from the live learner, reads them too
    from controlplane.shadows import fresh_shadow

    shadow = fresh_shadow(cfg, {"learner": {"kind": "greenserv"}}, None)
    assert shadow.config.context_indices == tuple(range(13))
    warm = fresh_shadow(cfg, {"learner": {"kind": "greenserv"}, "prior_weight": 0.5}, learner)
    assert warm.config.context_indices == tuple(range(13))
    # the default layout: the default config, dumped exactly as before
    default = load_config(_write(tmp_path, base + "learner: {kind: greenserv}\n"))
    assert default.featurizer.task_slots == 8
    assert default.learner.model_dump() == GreenServConfig().model_dump()


@pytest.mark.parametrize(
    ("featurizer", "needle"),
    [
        ("{task_slots: 2, tasks: [a, b, c]}", "tasks lists 3 names but task_slots is 2"),
        ("{dim: 30, task_slots: 12}", "dim 30 is too small for task_slots 12"),
        ("{task_slots: 0}", "featurizer.task_slots"),
    ],
)
def test_featurizer_layout_errors_name_the_field(tmp_path, featurizer, needle):
    text = f"arms: [{{name: a, model: a}}]\nfeaturizer: {featurizer}\n"
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(_write(tmp_path, text))


def test_a_pool_asks_ray_for_the_most_gpus_its_arms_set(tmp_path):
    from controlplane.cli.commands.serve_config import deployment_overrides
    from deployments.pool import pool_actor_options

    cfg = load_config(
        _write(
            tmp_path,
            "arms:\n"
            "  - {name: smol, model: smol, backend: vllm, num_gpus: 0.5}\n"
            "  - {name: smol:ahoy, model: smol, adapter: ahoy-r4, backend: vllm}\n"
            "  - {name: big, model: big, backend: vllm, device: cuda, num_gpus: 2}\n"
            "  - {name: replay, model: replay}\n",
        )
    )
    assert [a.num_gpus for a in cfg.arms] == [0.5, 0.0, 2.0, 0.0]
    assert (cfg.pool_gpus("smol"), cfg.pool_gpus("big"), cfg.pool_gpus("replay")) == (0.5, 2, 0)
    assert pool_actor_options(cfg, "smol") == {"num_cpus": 0, "num_gpus": 0.5}
    assert pool_actor_options(cfg, "replay") == {"num_cpus": 0}  # no GPU key: none asked
    # serve-config's --resources override replaces the code's options: it keeps the GPUs
    over = {
        d["name"]: d.get("ray_actor_options")
        for d in deployment_overrides(cfg, ["pool-big,pool-replay=gpu_node:1"], [])
    }
    assert over["pool-big"] == {"num_cpus": 0, "num_gpus": 2.0, "resources": {"gpu_node": 1.0}}
    assert over["pool-replay"] == {"num_cpus": 0, "resources": {"gpu_node": 1.0}}
    assert over["pool-smol"] is None  # no override: the code's options (num_gpus 0.5) hold


@pytest.mark.parametrize(
    ("arm", "needle"),
    [
        ("num_gpus: -1", "arms.0.num_gpus"),
        ("num_gpus: 1.5", "Ray shares a GPU below 1"),
        ("num_gpus: 1, device: cpu", "with device cpu"),
    ],
)
def test_gpu_errors_name_the_arm(tmp_path, arm, needle):
    path = _write(tmp_path, f"arms: [{{name: a, model: a, backend: vllm, {arm}}}]\n")
    msg = _refusal(path)
    assert needle in msg, msg


def test_the_haproxy_ingress_is_the_serve_controllers_environment(tmp_path):
    cfg = load_config(_write(tmp_path, "arms: [{name: a, model: a}]\n"))
    # auto: Serve's Python proxy for one gateway replica; HAProxy for two where found
    assert cfg.ingress.kind == "auto" and cfg.ingress.controller_env() == {}
    assert cfg.ingress.resolved(1, haproxy_found=True) == "proxy"
    assert cfg.ingress.resolved(2, haproxy_found=False) == "proxy"
    assert cfg.ingress.resolved(2, haproxy_found=True) == "haproxy"
    assert cfg.ingress.controller_env(2, haproxy_found=True)["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    explicit = load_config(
        _write(tmp_path, "arms: [{name: a, model: a}]\ningress: {kind: proxy}\n")
    )
    assert explicit.ingress.controller_env(3, haproxy_found=True) == {}
    cfg = load_config(
        _write(
            tmp_path,
            "arms: [{name: a, model: a}]\n"
            "gateway: {replicas: 2}\n"
            "ingress:\n"
            "  kind: haproxy\n"
            "  env: {RAY_SERVE_HAPROXY_STATS_PORT: '8404'}\n",
        )
    )
    assert cfg.ingress.controller_env() == {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        # the second line: HAProxy holds a request's whole body, so that it can resend it
        # and the next: each request carries its client's address to the replica
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"
        + BUFFER_REQUESTS_LINE
        + FORWARD_FOR_LINE,
        "RAY_SERVE_HAPROXY_RETRIES": "3",
        "RAY_SERVE_HAPROXY_STATS_PORT": "8404",
    }
    cfg = load_config(
        _write(
            tmp_path,
            "arms: [{name: a, model: a}]\n"
            "ingress: {kind: haproxy, retry_on: [conn-failure], buffer_requests: false}\n",
        )
    )
    assert cfg.ingress.controller_env()["RAY_SERVE_HAPROXY_RETRY_ON"] == (
        "conn-failure" + FORWARD_FOR_LINE
    )


@pytest.mark.parametrize(
    ("ingress", "needle"),
    [
        ("{kind: nginx}", "ingress.kind"),
        ("{kind: haproxy, retry_on: [conn-failure, on-crash]}", "'on-crash'"),
        ("{kind: haproxy, retry_on: []}", "ingress.retry_on"),
        ("{kind: haproxy, retries: -1}", "ingress.retries"),
        ("{kind: haproxy, env: {PATH: /tmp}}", "PATH: only RAY_SERVE_* settings"),
        ("{kind: haproxy, env: {RAY_SERVE_HAPROXY_RETRY_ON: 503}}", "RAY_SERVE_HAPROXY_RETRY_ON"),
        # the Python proxy would start Serve without these: refused, not dropped
        (
            "{kind: proxy, env: {RAY_SERVE_HAPROXY_STATS_PORT: '8404'}}",
            "kind is proxy, which would ignore",
        ),
    ],
)
def test_ingress_errors_name_the_key(tmp_path, ingress, needle):
    msg = _refusal(_write(tmp_path, f"arms: [{{name: a, model: a}}]\ningress: {ingress}\n"))
    assert needle in msg, msg
