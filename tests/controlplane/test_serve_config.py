"""`banditctl serve-config` writes a config that Ray Serve accepts and that builds the app."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from controlplane.cli import main
from controlplane.cli.demo import demo_config
from controlplane.config import BUFFER_REQUESTS_LINE, FORWARD_FOR_LINE, IngressConfig


def test_serve_config_is_a_valid_serve_deploy_schema_and_builds(tmp_path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    url = "postgresql+psycopg://user@db.internal:5432/banditctl"
    assert main(["serve-config", "-o", str(out), "--database-url", url, "--port", "8123"]) == 0
    doc = yaml.safe_load(out.read_text())
    schema = ServeDeploySchema.model_validate(doc)
    (app,) = schema.applications
    assert app.import_path == "deployments.serve_entry:app_builder"
    assert schema.http_options.port == 8123

    from deployments.serve_entry import app_builder

    monkeypatch.setenv("BANDITCTL_FEEDBACK_SECRET", "a-long-enough-cluster-secret")
    built = app_builder(doc["applications"][0]["args"])  # binds the graph; needs no cluster
    assert type(built).__name__ == "Application"
    assert doc["applications"][0]["args"]["config"]["arms"] == [
        a.model_dump(mode="json") for a in demo_config().arms
    ]


def test_serve_entry_refuses_without_a_secret(monkeypatch):
    import pytest

    from controlplane.cli.commands.serve_config import build
    from deployments.serve_entry import app_builder

    monkeypatch.delenv("BANDITCTL_FEEDBACK_SECRET", raising=False)
    args = build(None, "postgresql+psycopg://u@h/db", "0.0.0.0", 8000, None)["applications"][0][
        "args"
    ]
    with pytest.raises(ValueError, match="BANDITCTL_FEEDBACK_SECRET"):
        app_builder(args)


def test_the_sample_config_loads_and_its_serve_config_names_the_port_in_force(tmp_path):
    from pathlib import Path

    from controlplane.config import load_config

    # the README's cluster section uses it
    sample = str(Path(__file__).resolve().parents[2] / "examples" / "banditctl.yaml")
    cfg = load_config(sample)
    assert [a.name for a in cfg.arms] == ["small", "coder", "mathy", "large"]
    out = tmp_path / "serve.yaml"
    assert main(["serve-config", "--config", sample, "-o", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    embedded = doc["applications"][0]["args"]["config"]
    # no --port: the config's own port, the same in http_options and in the embedded config
    assert doc["http_options"]["port"] == embedded["http_port"] == cfg.http_port
    assert doc["http_options"]["host"] == embedded["http_host"] == "0.0.0.0"
    assert main(["serve-config", "--config", sample, "-o", str(out), "--port", "9100"]) == 0
    doc = yaml.safe_load(out.read_text())
    assert (
        doc["http_options"]["port"] == doc["applications"][0]["args"]["config"]["http_port"] == 9100
    )


def test_a_haproxy_ingress_starts_serves_controller_with_its_environment(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    config = tmp_path / "banditctl.yaml"
    config.write_text(
        "arms: [{name: a, model: a}]\ngateway: {replicas: 2}\ningress: {kind: haproxy}\n"
    )
    out = tmp_path / "serve.yaml"
    assert main(["serve-config", "--config", str(config), "-o", str(out)]) == 0
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    assert schema.controller_options is not None
    assert schema.controller_options.runtime_env == {
        "env_vars": {
            "RAY_SERVE_ENABLE_HA_PROXY": "1",
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"
            + BUFFER_REQUESTS_LINE
            + FORWARD_FOR_LINE,
            "RAY_SERVE_HAPROXY_RETRIES": "3",
        }
    }
    (app,) = schema.applications
    assert app.args["config"]["gateway"]["replicas"] == 2
    # the default ingress (auto) leaves Serve's controller as it is for one gateway replica
    assert main(["serve-config", "-o", str(out)]) == 0
    assert "controller_options" not in yaml.safe_load(out.read_text())
    # and takes HAProxy for two, from the config or from --replicas
    config.write_text("arms: [{name: a, model: a}]\ngateway: {replicas: 2}\n")
    assert main(["serve-config", "--config", str(config), "-o", str(out)]) == 0
    env = yaml.safe_load(out.read_text())["controller_options"]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    config.write_text("arms: [{name: a, model: a}]\n")
    assert (
        main(["serve-config", "--config", str(config), "--replicas", "Gateway=3", "-o", str(out)])
        == 0
    )
    assert "controller_options" in yaml.safe_load(out.read_text())
    assert (
        main(["serve-config", "--config", str(config), "--replicas", "Gateway=1", "-o", str(out)])
        == 0
    )
    assert "controller_options" not in yaml.safe_load(out.read_text())


def _serves_haproxy_config(env: dict[str, str], tmp_path) -> str:
    """The HAProxy config that Serve's HAProxy ingress writes with the controller
    environment ``env`` (its own template and code; no backend yet)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig

    cfg = HAProxyConfig(
        retry_on=env["RAY_SERVE_HAPROXY_RETRY_ON"],
        retries=int(env["RAY_SERVE_HAPROXY_RETRIES"]),
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
    )
    path = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg=cfg, config_file_path=str(path))._generate_config_file_internal()
    return path.read_text()


def _section(config: str, name: str) -> list[str]:
    """The stripped lines of the HAProxy config section that starts with ``name``."""
    (section,) = [s for s in re.split(r"^(?=\S)", config, flags=re.M) if s.startswith(name)]
    return [line.strip() for line in section.splitlines()]


@pytest.mark.parametrize("buffer_requests", [True, False])
def test_the_haproxy_ingress_holds_a_request_whole_before_sending_it(tmp_path, buffer_requests):
    """HAProxy sends a request again only if it held all of it when it first sent it: the
    ingress's environment, through Serve's own template, puts `option http-buffer-request`
    in the `defaults` section that every backend inherits, next to the `retry-on`
    conditions, and HAProxy accepts the file (``haproxy -c``, where Serve finds one)."""
    from ray.serve._private.haproxy import get_haproxy_binary

    ingress = IngressConfig(kind="haproxy", buffer_requests=buffer_requests)
    config = _serves_haproxy_config(ingress.controller_env(), tmp_path)
    defaults = _section(config, "defaults")
    assert "retry-on conn-failure empty-response" in defaults
    assert ("option http-buffer-request" in defaults) is buffer_requests
    assert config.count("http-buffer-request") == int(buffer_requests)  # nowhere else
    # each request reaches a replica with its client's address in X-Forwarded-For
    assert "option forwardfor" in defaults
    try:
        binary = get_haproxy_binary()
    except FileNotFoundError:
        return
    check = subprocess.run(
        [binary, "-c", "-f", str(tmp_path / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
