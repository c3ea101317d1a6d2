"""The deployment files (deployment.md §1–§5): Kubernetes manifests, the Dockerfile and the compose trial.

Each manifest is validated offline against the Kubernetes API's own schemas, which kubernetes-validate
ships, in their strict form (an unknown or misspelt field fails). The facts that span files are then
checked against the gateway itself: its settings' environment names, its routes, its metrics, its drain
timing, its numbers file loader and its command-line parsers, so renaming any of them breaks a test here.
"""

from __future__ import annotations

import argparse
import copy
import re
import shlex
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.adapters.app import STATE, VOICE_PATH, make_app
from gateway.adapters.serving import FORCE_AFTER_S, drain
from gateway.cli import PASS_THROUGH, build_parser
from gateway.numbers import load_numbers
from gateway.settings import SECRET_FIELDS, Settings, env_names, load_settings
from gateway.simulator.evi import CHAT_PATH
from gateway.simulator.evi import _parser as simulate_evi_parser
from gateway.wire.stream_token import TokenVerdict

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
NUMBERS_EXAMPLE = ROOT / "config" / "numbers.example.toml"

KUBERNETES_VERSION = "1.33.0"
"""The API version the manifests are written for; kubernetes-validate ships its schemas."""
KUSTOMIZATION = "kustomization.yaml"
SECRET_TEMPLATE = "secret.template.yaml"
"""Placeholders only: validated, but never listed in the kustomization (applying it would replace real secrets)."""
SECRET_NAME = "evi-gateway-secrets"
EXPECTED_KINDS = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service"}

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- loading


def _documents(path: Path) -> list[Manifest]:
    return [cast(Manifest, doc) for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(path for path in KUBERNETES.glob("*.yaml") if path.name != KUSTOMIZATION)


def _manifests() -> dict[str, Manifest]:
    """Each manifest file's one resource, by file name."""
    found: dict[str, Manifest] = {}
    for path in _manifest_files():
        docs = _documents(path)
        assert len(docs) == 1, f"{path.name}: one resource per file, found {len(docs)}"
        found[path.name] = docs[0]
    return found


def _kind(kind: str) -> Manifest:
    matches = [doc for doc in _manifests().values() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def _pod_spec() -> dict[str, Any]:
    return cast(dict[str, Any], _kind("Deployment")["spec"]["template"]["spec"])


def _container() -> dict[str, Any]:
    containers = _pod_spec()["containers"]
    assert len(containers) == 1
    return cast(dict[str, Any], containers[0])


def _env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in _container()["env"]}


def _plain_env() -> dict[str, str]:
    return {name: entry["value"] for name, entry in _env().items() if "value" in entry}


def _secret_env() -> dict[str, dict[str, Any]]:
    return {name: entry["valueFrom"]["secretKeyRef"] for name, entry in _env().items() if "valueFrom" in entry}


def _all_env_names() -> set[str]:
    return {name for field in Settings.model_fields for name in env_names(field)}


def _pre_stop_sleep_s() -> int:
    """The preStop hook's pause, as ``exec: sleep N`` or Kubernetes' own ``sleep: {seconds: N}``."""
    pre_stop = _container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    if command[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
        command = shlex.split(command[2])
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, f"preStop is not a sleep: {command}"
    return int(command[1])


def _compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def _seconds(duration: str) -> float:
    """A compose duration such as ``1m30s`` or ``45s``, in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts is not None and duration, f"not a duration: {duration!r}"
    hours, minutes, seconds = (float(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_command(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace | None]:
    """Parse ``gateway …`` with the real parsers: the top level, then simulate-evi's own options.

    Returns the top-level namespace and, for ``simulate-evi``, the simulator's; fails the test on any option
    the parsers do not know.
    """
    assert argv[:1] == ["gateway"], f"not a gateway command: {argv}"
    try:
        args, rest = build_parser().parse_known_args(argv[1:])
        if args.command == "simulate-evi":
            return args, simulate_evi_parser().parse_args(rest)
    except SystemExit:
        pytest.fail(f"the gateway's parsers refuse {shlex.join(argv)}")
    if args.command in PASS_THROUGH:
        pytest.fail(f"{shlex.join(argv)}: no parser here for `gateway {args.command}`'s own options")
    if rest:
        pytest.fail(f"{shlex.join(argv)}: `gateway {args.command}` does not take {rest}")
    return args, None


@pytest.fixture(name="no_network")
def fixture_no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to resolve a name or open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"network used: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield


# ---------------------------------------------------------------------------------------- schema validation


def _validate(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_valid_kubernetes_offline(no_network: None) -> None:
    """Each manifest passes the strict schema of its kind for the fixed Kubernetes version, with no network."""
    problems = []
    for name, manifest in _manifests().items():
        try:
            _validate(manifest)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []
    assert {manifest["kind"] for manifest in _manifests().values()} == EXPECTED_KINDS


def test_the_validation_is_strict_and_knows_every_kind(no_network: None) -> None:
    """A misspelt field, a wrong type and an unknown kind are each refused, so a pass above means something."""
    misspelt = copy.deepcopy(_kind("Deployment"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    wrong_type = copy.deepcopy(_kind("Service"))
    wrong_type["spec"]["ports"][0]["port"] = "eighty"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(broken)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _validate({"apiVersion": "example.com/v1", "kind": "Nothing", "metadata": {"name": "x"}})


def test_the_network_guard_refuses_connections(no_network: None) -> None:
    """The guard the validation runs under really stops a connection attempt."""
    with pytest.raises(AssertionError, match="network used"):
        socket.create_connection(("127.0.0.1", 9))


def test_each_file_holds_one_resource_and_the_kustomization_lists_them_all() -> None:
    """kustomization.yaml lists every manifest file (and only existing ones), all but the Secret template."""
    kustomization = _documents(KUBERNETES / KUSTOMIZATION)
    assert len(kustomization) == 1
    assert kustomization[0]["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization[0]["kind"] == "Kustomization"
    resources = kustomization[0]["resources"]
    assert len(resources) == len(set(resources)), "a file is listed twice"
    on_disk = set(_manifests())  # asserts one resource per file
    assert SECRET_TEMPLATE in on_disk
    assert set(resources) == on_disk - {SECRET_TEMPLATE}


# -------------------------------------------------------------------------------------------- the Deployment


def test_the_grace_period_outlasts_prestop_and_the_whole_drain() -> None:
    """terminationGracePeriodSeconds > preStop sleep + GATEWAY_DRAIN_GRACE_S + the drain's goodbye bound."""
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    drain_grace_s = load_settings(environ=_plain_env()).drain_grace_s
    pre_stop_s = _pre_stop_sleep_s()
    assert pre_stop_s >= 1
    assert drain_grace_s == float(_plain_env()["GATEWAY_DRAIN_GRACE_S"])
    assert grace > pre_stop_s + drain_grace_s + FORCE_AFTER_S, (grace, pre_stop_s, drain_grace_s, FORCE_AFTER_S)


def test_probes_and_scrape_annotations_name_the_http_port_and_routes() -> None:
    """Readiness asks /readyz and liveness /healthz on the named port http; Prometheus scrapes /metrics there."""
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(_plain_env()["GATEWAY_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = _kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == "/metrics"


async def test_the_app_built_from_the_deployment_serves_what_the_probes_and_autoscaler_ask(tmp_path: Path) -> None:
    """With the Deployment's settings and the ConfigMap's numbers file the app answers /readyz and /healthz
    with 200 and exports the autoscaler's gauge at /metrics; draining turns /readyz 503 while /healthz
    stays 200, so a draining pod leaves the Service but is not restarted."""
    numbers = tmp_path / "numbers.toml"
    numbers.write_text(_kind("ConfigMap")["data"]["numbers.toml"], encoding="utf-8")
    environ = {**_plain_env(), "GATEWAY_NUMBERS_FILE": str(numbers), "GATEWAY_RECORDINGS_DIR": str(tmp_path)}
    metric = _kind("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    readiness = _container()["readinessProbe"]["httpGet"]["path"]
    liveness = _container()["livenessProbe"]["httpGet"]["path"]
    app = make_app(load_settings(environ=environ))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get(readiness)).status == 200
        assert (await client.get(liveness)).status == 200
        page = await (await client.get("/metrics")).text()
        assert f"# TYPE {metric} gauge" in page
        assert re.search(rf"^{metric} 0(\.0)?$", page, re.MULTILINE)
        await drain(app[STATE], grace_s=0)
        assert (await client.get(readiness)).status == 503
        assert (await client.get(liveness)).status == 200


def test_every_secret_comes_from_the_secret_under_its_settings_name() -> None:
    """Secret env vars are gateway settings' names, read from evi-gateway-secrets under the same key; every
    secret setting is provided that way, none as a plain value; only HUME_SECRET_KEY and the webhook shared
    key are optional."""
    secret_env = _secret_env()
    assert set(secret_env) <= _all_env_names(), set(secret_env) - _all_env_names()
    for name, ref in secret_env.items():
        assert ref["name"] == SECRET_NAME and ref["key"] == name, (name, ref)
    secret_names = {name for field in SECRET_FIELDS for name in env_names(field)}
    assert secret_names <= set(secret_env), secret_names - set(secret_env)
    assert not secret_names & set(_plain_env())
    optional = {name for name, ref in secret_env.items() if ref.get("optional")}
    assert optional == {"HUME_SECRET_KEY", "GATEWAY_TWILIO_WEBHOOK_SHARED_KEY"}
    assert "GATEWAY_STREAM_TOKEN_SECRET" in secret_env  # one key for every replica (deployment.md §3)


def test_the_secret_template_has_exactly_the_keys_the_deployment_reads() -> None:
    """secret.template.yaml names evi-gateway-secrets with placeholders for exactly the keys the pods read."""
    template = _manifests()[SECRET_TEMPLATE]
    assert template["metadata"]["name"] == SECRET_NAME
    assert set(template["stringData"]) == {ref["key"] for ref in _secret_env().values()}
    assert set(template["stringData"].values()) == {"REPLACE_ME"}
    assert "kubectl create secret generic " + SECRET_NAME in (KUBERNETES / SECRET_TEMPLATE).read_text("utf-8")


def test_plain_env_vars_are_settings_and_load() -> None:
    """Plain env vars are gateway settings' names and load into the values production needs."""
    plain = _plain_env()
    assert set(plain) <= _all_env_names(), set(plain) - _all_env_names()
    settings = load_settings(environ=plain)
    assert settings.host == "0.0.0.0"
    assert settings.log_format == "json"
    assert settings.public_url is not None and settings.public_url.startswith("https://")
    assert settings.numbers_file == Path("/etc/gateway/numbers.toml")
    assert settings.recordings_dir == Path("/var/lib/gateway/recordings")


def test_the_container_runs_gateway_serve_as_the_images_user_on_a_read_only_root() -> None:
    """The container runs `gateway serve` as uid 10001 (the Dockerfile's USER), non-root, without privilege
    escalation or capabilities, on a read-only root with emptyDir volumes for /tmp and the recordings."""
    container, pod = _container(), _pod_spec()
    args, _ = parse_command(container["command"])
    assert args.command == "serve"
    assert container["image"] == "evi-phone-gateway:latest"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user()[0]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for path in ("/tmp", _plain_env()["GATEWAY_RECORDINGS_DIR"]):
        assert "emptyDir" in volumes[mounts[path]], path
    assert {"requests", "limits"} <= set(container["resources"])


def test_the_numbers_configmap_is_the_example_and_mounted_where_the_gateway_reads_it(tmp_path: Path) -> None:
    """The ConfigMap's numbers.toml equals config/numbers.example.toml, loads with the gateway's loader, and
    is mounted so that GATEWAY_NUMBERS_FILE names it."""
    configmap = _kind("ConfigMap")
    text = configmap["data"]["numbers.toml"]
    assert text == NUMBERS_EXAMPLE.read_text(encoding="utf-8")
    copy_path = tmp_path / "numbers.toml"
    copy_path.write_text(text, encoding="utf-8")
    line = load_numbers(copy_path).line_for("+15550001111")
    assert set(line.tools) == {"lookup_order"} and "supervisor" in line.transfer
    numbers_file = Path(_plain_env()["GATEWAY_NUMBERS_FILE"])
    mounts = {mount["name"]: mount for mount in _container()["volumeMounts"]}
    volume = next(
        v for v in _pod_spec()["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]
    )
    assert Path(mounts[volume["name"]]["mountPath"]) == numbers_file.parent
    assert numbers_file.name in configmap["data"]


# ------------------------------------------------------------------------ Service, disruptions, autoscaling


def _selects_the_pods(selector: dict[str, str]) -> bool:
    labels = _kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_the_service_pdb_and_deployment_select_the_gateway_pods() -> None:
    """The ClusterIP Service sends port 80 to the pods' http port; it, the PDB and the Deployment select the
    pods' labels; the PDB lets at most one pod go at a time."""
    service = _kind("Service")["spec"]
    assert service["type"] == "ClusterIP"
    assert [(port["port"], port["targetPort"]) for port in service["ports"]] == [(80, "http")]
    pdb = _kind("PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 1
    for selector in (service["selector"], pdb["selector"]["matchLabels"]):
        assert _selects_the_pods(selector), selector
    assert _selects_the_pods(_kind("Deployment")["spec"]["selector"]["matchLabels"])


def test_the_autoscaler_scales_on_active_calls_below_the_admission_limit() -> None:
    """The HPA scales the Deployment from 2 to 10 pods on the Pods metric gateway_active_calls, aims below
    GATEWAY_MAX_CONCURRENT_CALLS (pods are added before callers hear busy), and waits out a whole drain
    before scaling down."""
    hpa = _kind("HorizontalPodAutoscaler")["spec"]
    deployment = _kind("Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    [metric] = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "gateway_active_calls"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    target = float(metric["pods"]["target"]["averageValue"])
    assert 0 < target < load_settings(environ=_plain_env()).max_concurrent_calls
    window = hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    assert window >= deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


async def test_a_stream_token_minted_by_one_replica_is_redeemed_by_another() -> None:
    """Two apps with the same GATEWAY_STREAM_TOKEN_SECRET: the token in one's TwiML is good on the other, once."""
    environ = {"GATEWAY_STREAM_TOKEN_SECRET": "0123456789abcdef" * 4}
    webhook_app, media_app = make_app(load_settings(environ=environ)), make_app(load_settings(environ=environ))
    call_sid = "CA" + "0" * 32
    async with TestClient(TestServer(webhook_app)) as client:
        answer = await client.post(VOICE_PATH, data={"CallSid": call_sid, "To": "+15550001111"})
        twiml = await answer.text()
    now = time.time()  # tokens expire on the wall clock, which replicas share
    [token] = [p.get("value") for p in ET.fromstring(twiml).iter("Parameter") if p.get("name") == "token"]
    assert token is not None
    tokens = media_app[STATE].tokens
    assert tokens.redeem(token, call_sid, now) is TokenVerdict.OK
    assert tokens.redeem(token, call_sid, now) is TokenVerdict.REUSED


# ------------------------------------------------------------------------------------------------ Dockerfile


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (keyword, arguments), continuation lines joined, grouped by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"an instruction before FROM: {line}"
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def _dockerfile_user() -> tuple[int, str]:
    """The final stage's USER as (uid, the line); fails unless it is numeric, so runAsNonRoot can check it."""
    users = [arguments for keyword, arguments in _dockerfile_stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]} is not numeric"
    return int(uid), users[-1]


def test_the_image_runs_as_a_non_root_user() -> None:
    """The final stage's USER is a numeric uid other than 0, the one the Deployment runs as."""
    uid, _ = _dockerfile_user()
    assert uid != 0
    assert uid == _pod_spec()["securityContext"]["runAsUser"]


def test_the_extras_build_arg_is_optional_and_names_a_real_extra() -> None:
    """ARG EXTRAS defaults to empty in every stage that uses it and feeds both pip steps; the voice extra it
    is documented with exists in pyproject.toml."""
    import tomllib

    using = 0
    for stage in _dockerfile_stages():
        runs = [arguments for keyword, arguments in stage if keyword == "RUN" and "EXTRAS" in arguments]
        if not runs:
            continue
        using += 1
        args = [arguments for keyword, arguments in stage if keyword == "ARG" and arguments.startswith("EXTRAS")]
        assert args in (["EXTRAS"], ['EXTRAS=""'], ["EXTRAS="]), f"EXTRAS is not declared with an empty default: {args}"
        assert any("pip " in run and "${EXTRAS:+[$EXTRAS]}" in run for run in runs)
    assert using == 2, "both the wheel build and the install must see EXTRAS"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert "voice" in extras
    assert "--build-arg EXTRAS=voice" in DOCKERFILE.read_text(encoding="utf-8")


def test_the_image_checks_healthz_and_runs_gateway_serve() -> None:
    """HEALTHCHECK asks /healthz on the gateway's port, and CMD is a `gateway serve` the parser accepts."""
    final = dict(_dockerfile_stages()[-1])
    assert "/healthz" in final["HEALTHCHECK"]
    assert f":{load_settings(environ={}).port}/healthz" in final["HEALTHCHECK"]
    args, _ = parse_command(yaml.safe_load(final["CMD"]))
    assert args.command == "serve"


# ----------------------------------------------------------------------------------------- compose trial


def test_the_compose_trial_commands_parse_with_the_real_parsers() -> None:
    """Both services run `gateway` commands the project's parsers accept: serve, and simulate-evi listening
    on all interfaces, port 8765, key test-key, cheap mode."""
    services = _compose()["services"]
    assert set(services) == {"evi", "gateway"}
    serve, _ = parse_command(services["gateway"]["command"])
    assert serve.command == "serve"
    top, sim = parse_command(services["evi"]["command"])
    assert top.command == "simulate-evi" and sim is not None
    assert (sim.host, sim.port, sim.api_key, sim.cheap) == ("0.0.0.0", 8765, "test-key", True)


def test_the_compose_gateway_reaches_the_simulator_it_starts() -> None:
    """GATEWAY_EVI_URL names the evi service at its --port and chat path, HUME_API_KEY is its --api-key, the
    env loads as settings, and port 8080 on the host reaches the gateway's port."""
    services = _compose()["services"]
    _, sim = parse_command(services["evi"]["command"])
    assert sim is not None
    environment = services["gateway"]["environment"]
    assert set(environment) <= _all_env_names(), set(environment) - _all_env_names()
    settings = load_settings(environ={key: str(value) for key, value in environment.items()})
    evi_url = urlsplit(settings.evi_url)
    assert (evi_url.scheme, evi_url.hostname, evi_url.port, evi_url.path) == ("ws", "evi", sim.port, CHAT_PATH)
    assert settings.hume_api_key is not None and settings.hume_api_key.get_secret_value() == sim.api_key
    assert services["gateway"]["ports"] == [f"8080:{settings.port}"]
    assert settings.public_url == "http://localhost:8080"
    assert f"('127.0.0.1', {sim.port})" in " ".join(services["evi"]["healthcheck"]["test"])
    assert services["gateway"]["depends_on"]["evi"]["condition"] == "service_healthy"


def test_the_compose_gateway_mounts_the_example_numbers_and_outlasts_its_drain(tmp_path: Path) -> None:
    """The mounted numbers file exists and loads, and stop_grace_period outlasts the trial's drain."""
    gateway = _compose()["services"]["gateway"]
    environment = {key: str(value) for key, value in gateway["environment"].items()}
    mounts = {target: source for source, target, *_ in (volume.split(":") for volume in gateway["volumes"])}
    source = (COMPOSE.parent / mounts[environment["GATEWAY_NUMBERS_FILE"]]).resolve()
    assert source == NUMBERS_EXAMPLE
    load_numbers(source)
    drain_grace_s = load_settings(environ=environment).drain_grace_s
    assert _seconds(gateway["stop_grace_period"]) > drain_grace_s + FORCE_AFTER_S


def test_the_command_check_catches_a_renamed_flag() -> None:
    """A flag the parsers do not know, or a stray argument to serve, fails the command check."""
    for argv in (
        ["gateway", "simulate-evi", "--api-keys", "test-key"],
        ["gateway", "serve", "--evi-url", "ws://evi:8765"],
        ["gateway", "serve", "extra"],
    ):
        with pytest.raises(pytest.fail.Exception):
            parse_command(argv)
