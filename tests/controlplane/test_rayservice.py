"""`banditctl serve-config --format rayservice`: a KubeRay RayService manifest that the
RayService CRD's schema accepts, holding the Serve config `serve deploy` would take, with
token auth on; and the placement options (`--resources`, `--replicas`) of both formats."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from controlplane.cli import main
from tests.conftest import REPO_ROOT

SAMPLE = str(REPO_ROOT / "examples" / "banditctl.yaml")
SCHEMA = yaml.safe_load((Path(__file__).parent / "rayservice_crd_subset.yaml").read_text())
PLACEMENT = [
    "--resources", "Gateway=head", "--resources", "LearnerService=head",
    "--replicas", "pool-large=2", "--resources", "pool-large=slot:1",
]  # fmt: skip


def _generate(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "rayservice.yaml"
    assert main(["serve-config", "--config", SAMPLE, "--format", "rayservice", "-o", str(out),
                 *extra]) == 0  # fmt: skip
    return yaml.safe_load(out.read_text())


def _errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def test_the_manifest_validates_against_the_rayservice_crd_schema(tmp_path):
    doc = _generate(tmp_path, *PLACEMENT, "--name", "router", "--namespace", "llm")
    assert _errors(doc) == []
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert doc["metadata"]["name"] == "router" and doc["metadata"]["namespace"] == "llm"


def test_the_schema_refuses_what_the_crd_refuses(tmp_path):
    """The validator bites: each mistake below is one the CRD (or this subset's strictness
    about pruned fields) rejects."""
    doc = _generate(tmp_path)
    spec = doc["spec"]["rayClusterConfig"]
    mistakes = {
        "replicas as text": lambda d: d["spec"]["rayClusterConfig"]["workerGroupSpecs"][
            0
        ].__setitem__("replicas", "1"),
        "no head template": lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"].pop(
            "template"
        ),
        "auth mode unknown": lambda d: d["spec"]["rayClusterConfig"]["authOptions"].__setitem__(
            "mode", "none"
        ),
        "serve config as a map": lambda d: d["spec"].__setitem__("serveConfigV2", {"a": 1}),
        "a start param not text": lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"][
            "rayStartParams"
        ].__setitem__("num-cpus", 1),
        "a bad quantity": lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"][
            "spec"
        ]["containers"][0]["resources"]["limits"].__setitem__("memory", "4 GB"),
        "a misspelt field": lambda d: d["spec"]["rayClusterConfig"].__setitem__(
            "workerGroupSpec", []
        ),
    }
    assert spec["headGroupSpec"]["template"]["spec"]["containers"]
    for what, spoil in mistakes.items():
        bad = copy.deepcopy(doc)
        spoil(bad)
        assert _errors(bad), f"the schema accepted {what}"


def test_the_serve_config_inside_is_the_one_serve_deploy_takes(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    doc = _generate(tmp_path, *PLACEMENT, "--port", "8100")
    inside = yaml.safe_load(doc["spec"]["serveConfigV2"])
    plain = tmp_path / "serve.yaml"
    assert main(["serve-config", "--config", SAMPLE, "-o", str(plain), "--port", "8100",
                 *PLACEMENT]) == 0  # fmt: skip
    assert inside == yaml.safe_load(plain.read_text())
    ServeDeploySchema.model_validate(inside)
    # the Serve port is the pods' port named "serve" (the operator's serve Service)
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8100, "name": "serve"} in head["ports"]


def test_token_auth_is_on_and_every_secret_comes_from_the_kubernetes_secret(tmp_path):
    doc = _generate(tmp_path, "--secret", "router-secrets")
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "router-secrets"}
    assert cluster["rayVersion"] == "2.60.0"
    cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert "database_url" not in cfg  # never in the manifest: the pods read DATABASE_URL
    wanted = {
        "DATABASE_URL",
        "BANDITCTL_FEEDBACK_SECRET",
        "BANDITCTL_APP_KEY",
        "BANDITCTL_ADMIN_KEY",
    }
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert set(env) == wanted
        for name, e in env.items():
            assert "value" not in e
            assert e["valueFrom"]["secretKeyRef"] == {"name": "router-secrets", "key": name}
        assert all(e["name"] != "RAY_AUTH_MODE" for e in container["env"])  # never disabled


def test_nodes_advertise_the_resources_the_placement_examples_pin_to(tmp_path):
    doc = _generate(tmp_path, "--workers", "3")
    cluster = doc["spec"]["rayClusterConfig"]

    def advertised(group: dict) -> dict:
        raw = group["rayStartParams"]["resources"]
        assert raw.startswith('"') and raw.endswith('"')  # KubeRay's quoting for the shell
        return json.loads(raw[1:-1].replace('\\"', '"'))

    assert advertised(cluster["headGroupSpec"]) == {"head": 1}
    (workers,) = cluster["workerGroupSpecs"]
    assert advertised(workers) == {"worker": 1}
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3


def test_placement_options_become_serve_deployment_overrides(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    assert main(["serve-config", "--config", SAMPLE, "-o", str(out), *PLACEMENT,
                 "--resources", "pool-coder=worker:0.5,gpu_a:1"]) == 0  # fmt: skip
    doc = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(doc)
    by_name = {d["name"]: d for d in doc["applications"][0]["deployments"]}
    # an override's ray_actor_options replaces the code's: num_cpus 0 is kept
    assert by_name["Gateway"]["ray_actor_options"] == {"num_cpus": 0, "resources": {"head": 0.01}}
    assert by_name["pool-large"]["num_replicas"] == 2
    assert by_name["pool-large"]["ray_actor_options"]["resources"] == {"slot": 1.0}
    assert by_name["pool-coder"]["ray_actor_options"]["resources"] == {"worker": 0.5, "gpu_a": 1.0}
    assert "ray_actor_options" not in by_name["pool-small"]  # the code's options stand
    assert set(by_name) == {"Gateway", "LearnerService"} | {
        f"pool-{m}" for m in ("small", "coder", "mathy", "large")
    }


def test_rollouts_start_each_replacement_before_stopping_the_old_replica(tmp_path):
    """Serve's default surge (0) stops a replica first: a one-replica gateway would leave
    a gap during `serve deploy` of a new version. Every deployment surges unless told."""
    out = tmp_path / "serve.yaml"
    assert main(["serve-config", "--config", SAMPLE, "-o", str(out),
                 "--max-surge", "pool-large,pool-coder=0", "--max-surge", "Gateway=50"]) == 0  # fmt: skip
    deps = {d["name"]: d for d in yaml.safe_load(out.read_text())["applications"][0]["deployments"]}
    surge = {name: d["max_surge_percent"] for name, d in deps.items()}
    assert surge == {
        "Gateway": 50, "LearnerService": 100, "pool-small": 100, "pool-mathy": 100,
        "pool-coder": 0, "pool-large": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "flags",
    [
        ["--resources", "pool-nope=head"],
        ["--resources", "Gateway"],
        ["--resources", "Gateway=head:0"],
        ["--resources", "Gateway=head:lots"],
        ["--replicas", "pool-large=0"],
        ["--replicas", "LearnerService=two"],
        ["--format", "rayservice", "--workers", "-1"],
        ["--max-surge", "Gateway=150"],
        ["--max-surge", "pool-nope=0"],
    ],
)
def test_bad_placement_options_exit_2_naming_the_option(tmp_path, capsys, flags):
    out = tmp_path / "x.yaml"
    assert main(["serve-config", "--config", SAMPLE, "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flags[-2] in err
    assert not out.exists()


def test_a_rotated_feedback_secret_comes_from_the_kubernetes_secret_too(tmp_path):
    cfg = yaml.safe_load(Path(SAMPLE).read_text())
    cfg.setdefault("auth", {})["feedback_tokens"] = {
        "key_id": "2026-12",
        "previous": [{"key_id": "2026-11", "secret_env": "BANDITCTL_FEEDBACK_SECRET_2026_11",
                      "expires_at": "2026-12-08T00:00:00Z"}],
    }  # fmt: skip
    path = tmp_path / "rotated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "rayservice.yaml"
    assert main(["serve-config", "--config", str(path), "--format", "rayservice",
                 "-o", str(out)]) == 0  # fmt: skip
    cluster = yaml.safe_load(out.read_text())["spec"]["rayClusterConfig"]
    (container,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["BANDITCTL_FEEDBACK_SECRET_2026_11"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "BANDITCTL_FEEDBACK_SECRET_2026_11"
    inside = yaml.safe_load(yaml.safe_load(out.read_text())["spec"]["serveConfigV2"])
    tokens = inside["applications"][0]["args"]["config"]["auth"]["feedback_tokens"]
    assert tokens["key_id"] == "2026-12" and tokens["previous"][0]["key_id"] == "2026-11"
