"""deploy/: the Dockerfile and Kubernetes manifests are well-formed and agree with the engine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from flowkit import decisions, gen_payloads, items_of, run_memory

from intentflow.cli import build_parser
from intentflow.cluster import AFFINITY_MODULUS, parse_addresses
from intentflow.commands.produce import Producer
from intentflow.config import load_config
from intentflow.dataflows.sources import partition_for

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert isinstance(doc, dict), path
            assert {"apiVersion", "kind"} <= set(doc), path
            assert doc["kind"] not in objects, f"{doc['kind']} twice"
            objects[doc["kind"]] = doc
    return objects


def engine_container() -> dict[str, Any]:
    spec = manifests()["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_kustomization_lists_every_manifest() -> None:
    kust = manifests()["Kustomization"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert set(manifests()) == {"Kustomization", "ConfigMap", "Service", "StatefulSet"}


def test_the_statefulset_runs_one_cluster_process_per_pod() -> None:
    objs = manifests()
    sts, svc = objs["StatefulSet"], objs["Service"]
    spec = sts["spec"]
    replicas = spec["replicas"]
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"  # the processes wait for each other
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()

    container = engine_container()
    args = container["args"]
    expanded = [a.replace("$(POD_INDEX)", "1") for a in args]  # as Kubernetes expands it
    parsed = build_parser().parse_args(expanded)  # the engine's own parser accepts them
    assert parsed.func == "intentflow.commands.run:cmd_run"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    addresses = parse_addresses(flag(args, "--addresses"))
    name, service = sts["metadata"]["name"], svc["metadata"]["name"]
    assert list(addresses) == [f"{name}-{i}.{service}:{ports['cluster']}" for i in range(replicas)]
    assert flag(args, "--process-id") == "$(POD_INDEX)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    assert "secretKeyRef" in env["REDIS_URL"]["valueFrom"]
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["cluster"]["port"] == ports["cluster"]
    assert svc_ports["metrics"]["port"] == ports["metrics"]


def test_metrics_port_probes_and_recovery_volume_agree() -> None:
    container = engine_container()
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(flag(args, "--metrics-port")) == ports["metrics"]
    assert flag(args, "--metrics-host") == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    sts = manifests()["StatefulSet"]
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    state_mount = Path(mounts[claim["metadata"]["name"]])
    recovery = Path(flag(args, "--recovery-dir"))
    assert recovery.parent == state_mount  # a subdirectory the engine can make owner-only
    assert "--init-recovery" in args
    security = sts["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["fsGroup"] == security["runAsUser"]


def test_the_configmap_holds_a_valid_configuration_and_rules(tmp_path: Path) -> None:
    objs = manifests()
    data = objs["ConfigMap"]["data"]
    container = engine_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in objs["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    (config_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[config_volume]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    config_path = Path(flag(container["args"], "--config"))
    assert config_path.parent == Path(mounts[config_volume])

    (tmp_path / "intentflow.toml").write_text(data[config_path.name])
    (tmp_path / "rules.toml").write_text(data["rules.toml"])
    cfg = load_config(tmp_path / "intentflow.toml", env={})
    replicas = objs["StatefulSet"]["spec"]["replicas"]
    assert cfg.engine.affinity is True
    assert cfg.engine.shards == cfg.input.partitions
    assert replicas <= cfg.engine.shards
    assert AFFINITY_MODULUS % replicas == 0  # shards spread evenly over the pods
    assert Path(cfg.rules.path).parent == Path(mounts[config_volume])
    assert Path(cfg.rules.path).name in data
    tomllib.loads(data["rules.toml"])
    cmd = [sys.executable, "-m", "intentflow.cli", "rules", "check", str(tmp_path / "rules.toml")]
    check = subprocess.run(
        [*cmd, "--config", str(tmp_path / "intentflow.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stderr


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_the_dockerfile_builds_the_package_and_runs_unprivileged(
    dockerfile: list[tuple[str, str]],
) -> None:
    keywords = {k for k, _ in dockerfile}
    assert keywords <= {
        "FROM",
        "WORKDIR",
        "COPY",
        "RUN",
        "ENV",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
    }
    froms = [rest for k, rest in dockerfile if k == "FROM"]
    assert all(re.match(r"python:3\.1[1-9]-slim\b", f) for f in froms)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {rest.split()[0] for k, rest in dockerfile if k == "COPY" and "--from" not in rest}
    assert package_dirs <= copied
    for name in copied:
        assert (ROOT / name).exists(), name
    (user,) = [rest for k, rest in dockerfile if k == "USER"]
    assert not user.startswith(("0", "root"))
    sts_user = manifests()["StatefulSet"]["spec"]["template"]["spec"]["securityContext"]
    assert user.split(":")[0] == str(sts_user["runAsUser"])
    exposed = {int(p) for k, rest in dockerfile if k == "EXPOSE" for p in rest.split()}
    assert exposed == {p["containerPort"] for p in engine_container()["ports"]}
    (entry,) = [rest for k, rest in dockerfile if k == "ENTRYPOINT"]
    assert json.loads(entry) == ["intentflow"]
    assert any(k == "ENV" and "NUMBA_CACHE_DIR=" in rest for k, rest in dockerfile)


# --- the StatefulSet's command line, run as a cluster on this machine ------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _marks(tag: str, ts_ms: int, partitions: int) -> list[bytes]:
    """One event of an entity of its own per input stream."""
    out = []
    for p in range(partitions):
        n = 0
        while partition_for(f"{tag}-{n}", partitions) != p:
            n += 1
        entity = f"{tag}-{n}"
        event = {"event_id": entity, "ts": ts_ms, "entity_id": entity, "type": "page_view"}
        out.append(orjson.dumps({**event, "props": {"page": "/", "category": "home"}}))
    return out


def test_the_pods_command_line_runs_a_cluster_with_a_volume_per_pod(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Each pod's arguments (paths and addresses mapped to this machine) as one process each.

    Every process keeps its own recovery partition in its own directory; the
    cluster is killed with SIGKILL half-way and started again, and decides
    exactly like the engine in memory.
    """
    objs = manifests()
    replicas = objs["StatefulSet"]["spec"]["replicas"]
    data = objs["ConfigMap"]["data"]
    etc = tmp_path / "etc"
    etc.mkdir()
    for name, text in data.items():
        (etc / name).write_text(text.replace("/etc/intentflow", str(etc)))
    cfg = load_config(etc / "intentflow.toml", env={})
    parts = cfg.input.partitions
    args = engine_container()["args"]
    loopback = ";".join(f"127.0.0.1:{p}" for p in _free_ports(replicas))
    metrics = _free_ports(replicas)

    def pod_args(i: int) -> list[str]:
        out = []
        for a in args:
            a = a.replace("$(POD_INDEX)", str(i)).replace("/etc/intentflow", str(etc))
            a = a.replace("/var/lib/intentflow", str(tmp_path / f"pod-{i}"))
            out.append(a)
        out[out.index("--addresses") + 1] = loopback
        out[out.index("--metrics-host") + 1] = "127.0.0.1"
        out[out.index("--metrics-port") + 1] = str(metrics[i])
        return [sys.executable, "-m", "intentflow.cli", *out, "--snapshot-interval", "0.2"]

    payloads = gen_payloads(3000, seed=31)
    first, second = payloads[:1500], payloads[1500:]
    marks1 = _marks("mark1", int(orjson.loads(first[-1])["ts"]), parts)
    marks2 = _marks("mark2", int(orjson.loads(second[-1])["ts"]), parts)
    expected = decisions(run_memory(cfg, items_of(first + marks1 + second + marks2)))
    assert len(expected) > 5
    producer = Producer(redis_client, cfg.input.events_prefix, parts)
    env = {**os.environ, "REDIS_URL": redis_url}
    logs = [tmp_path / f"pod-{i}.log" for i in range(replicas)]

    def run_until(marks: list[bytes]) -> None:
        ids = [orjson.loads(m)["entity_id"] for m in marks]
        pods = []
        for i in range(replicas):
            with logs[i].open("ab") as f:
                pods.append(subprocess.Popen(pod_args(i), stdout=f, stderr=f, env=env))
        try:
            deadline = time.monotonic() + 150
            while not all(redis_client.exists(f"intentflow:score:{e}") for e in ids):
                failed = [p.returncode for p in pods if p.poll() is not None]
                assert not failed, f"a pod exited {failed}: {logs[0].read_text()[-2000:]}"
                assert time.monotonic() < deadline, logs[0].read_text()[-2000:]
                time.sleep(0.1)
        finally:
            for p in pods:
                p.kill()
                p.wait()

    producer.send(first + marks1)
    run_until(marks1)
    for i in range(replicas):  # one recovery partition per pod, on its own volume
        assert [p.name for p in (tmp_path / f"pod-{i}" / "recovery").glob("part-*.sqlite3")] == [
            f"part-{i}.sqlite3"
        ]
    producer.send(second + marks2)
    run_until(marks2)
    time.sleep(0.5)
    docs = [orjson.loads(f[b"alert"]) for _id, f in redis_client.xrange(cfg.output.alerts_stream)]
    assert len({d["alert_id"] for d in docs}) == len(docs)
    assert sorted((d["alert_id"], d["action"]["id"], d["score"]) for d in docs) == expected
