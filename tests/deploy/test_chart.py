"""The deployment files, checked offline with real tools: the Helm chart (``deploy/voxbus``)
rendered by a real ``helm`` for one and two regions; every object it renders validated, strictly
(an unknown field is an error), against the Kubernetes API's schemas; every ScaledObject against
the schema of KEDA's own CRD; the consumer lag each ScaledObject points KEDA at read from a real
nats-server's monitoring endpoint, as KEDA reads it, after the stages' consumers were made as the
workers make them; and the NATS chart's values per region (``deploy/nats``) turned into a server
configuration that a real ``nats-server`` accepts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from voxbus.contracts import streams
from voxbus.contracts.subjects import Kind
from voxbus.ops.deploy import nats_values, server_config_of, to_yaml
from voxbus.ops.nats import EmbeddedNats, nats_server_binary
from voxbus.runtime.bus import Bus
from voxbus.runtime.procs import free_port
from voxbus.runtime.stage import SessionPolicy
from voxbus.runtime.worker import Worker
from voxbus.services.llm.stage import LlmStage
from voxbus.services.stt.stage import SttStage
from voxbus.services.tools.stage import ToolsStage
from voxbus.services.tts.stage import TtsStage

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "voxbus"
HELM = ROOT / ".bin" / "helm"
KEDA_CRD = ROOT / ".bin" / "keda" / "keda.sh_scaledobjects.yaml"
#: The Kubernetes version the objects are checked against.
KUBERNETES = "1.34.0"
STAGES = {"stt": SttStage, "llm": LlmStage, "tts": TtsStage}
#: One tools module (``voxbus tools shop.tools``), as a builder configures it.
SHOP = ("tools.modules[0].name=shop", "tools.modules[0].module=shop.tools")


def _helm(regions: list[str], *sets: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        raise AssertionError(f"{HELM} is missing: ./dev setup builds it")
    args = [str(HELM), "template", "voxbus", str(CHART),
            "--set", f"regions={{{','.join(regions)}}}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def render(regions: list[str], *sets: str) -> list[dict[str, Any]]:
    out = _helm(regions, *sets)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def _of(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> Iterator[str]:
    """Fields of ``obj`` the (structural, OpenAPI) ``schema`` does not define."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in obj.items():
            if props is not None and k in props:
                yield from _unknown_fields(v, props[k], f"{path}.{k}")
            elif isinstance(extra, dict):
                yield from _unknown_fields(v, extra, f"{path}.{k}")
            elif props is not None and extra is not True:
                yield f"{path}.{k}"
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            yield from _unknown_fields(v, schema["items"], f"{path}[{i}]")


def _keda_schema() -> dict[str, Any]:
    if not KEDA_CRD.exists():
        raise AssertionError(f"{KEDA_CRD} is missing: ./dev setup fetches it")
    crd = yaml.safe_load(KEDA_CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.fast
@pytest.mark.parametrize("regions", [["eu"], ["eu", "us"]])
def test_every_rendered_object_is_valid(regions: list[str]) -> None:
    docs = render(regions)
    deployments, configs = _of(docs, "Deployment"), _of(docs, "ConfigMap")
    scaled = _of(docs, "ScaledObject")
    assert sorted(deployments) == sorted(f"voxbus-{s}-{r}" for r in regions
                                         for s in (*STAGES, "bridge"))
    assert sorted(scaled) == sorted(f"voxbus-{s}-{r}" for r in regions for s in STAGES)
    assert len(docs) == len(deployments) + len(configs) + len(scaled)
    for d in docs:
        if d["kind"] != "ScaledObject":
            kubernetes_validate.validate(d, KUBERNETES, strict=True)
    schema = _keda_schema()
    for name, so in scaled.items():
        jsonschema.validate(so, schema)
        assert not list(_unknown_fields(so, schema)), (name, list(_unknown_fields(so, schema)))
        assert so["spec"]["scaleTargetRef"]["name"] in deployments
        assert so["spec"]["minReplicaCount"] == 0  # an idle stage goes to zero
    for r in regions:
        settings = configs[f"voxbus-{r}"]["data"]
        assert settings["VOXBUS_REGION"] == r and f"nats-{r}" in settings["NATS_URL"]
        for stage in (*STAGES, "bridge"):
            pod = deployments[f"voxbus-{stage}-{r}"]["spec"]["template"]["spec"]
            (c,) = [c for c in pod["containers"] if c["name"] == stage]
            assert c["args"] == [stage]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert {e["name"] for e in c.get("env", [])} >= {"VOXBUS_CREDENTIALS"}
            assert pod["volumes"][0]["secret"]["secretName"] == f"voxbus-{stage}-{r}"
            assert pod["terminationGracePeriodSeconds"] >= 30
        llm = deployments[f"voxbus-llm-{r}"]["spec"]["template"]["spec"]
        assert llm["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert configs[f"voxbus-llm-{r}"]["data"]["LLM_BACKEND"] == "openai"
        stt = deployments[f"voxbus-stt-{r}"]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in stt["containers"][0]["resources"].get("limits", {})
        assert "nodeSelector" not in stt
    assert not any("tools" in name for name in deployments)  # no module configured: none


@pytest.mark.fast
@pytest.mark.parametrize("regions", [["eu"], ["eu", "us"]])
def test_a_tools_module_gets_workers_credentials_and_scaling_per_region(
    regions: list[str]
) -> None:
    """``tools.modules``: per module and region a Deployment running ``voxbus tools MODULE``
    with the probes, drain and identity of a stage (the ``tools`` role's Secret), a ConfigMap of
    its settings, and a ScaledObject on the lag of the ``tools-p<n>`` consumers that never goes
    below the module's replicas (a call cannot wait for a pod to start)."""
    docs = render(regions, *SHOP, "tools.modules[0].replicas=3",
                  "tools.modules[0].image.repository=registry.example/shop",
                  "tools.modules[0].image.tag=1.4.0", "tools.modules[0].env.SHOP_API=http://shop",
                  "tools.env.SHOP_TIMEOUT_S=5")
    deployments, configs = _of(docs, "Deployment"), _of(docs, "ConfigMap")
    scaled = _of(docs, "ScaledObject")
    names = sorted(f"voxbus-tools-shop-{r}" for r in regions)
    assert sorted(n for n in deployments if "tools" in n) == names
    assert sorted(n for n in scaled if "tools" in n) == names
    assert sorted(n for n in configs if "tools" in n) == names
    for d in docs:
        if d["kind"] != "ScaledObject":
            kubernetes_validate.validate(d, KUBERNETES, strict=True)
    schema = _keda_schema()
    for r in regions:
        name = f"voxbus-tools-shop-{r}"
        dep = deployments[name]
        assert "replicas" not in dep["spec"]  # KEDA's to set
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["args"] == ["tools", "shop.tools"]  # the image's entrypoint is voxbus
        assert c["image"] == "registry.example/shop:1.4.0"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert {e["name"]: e["value"] for e in c["env"]} == {
            "VOXBUS_CREDENTIALS": "/var/run/voxbus/identity.json"}
        assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [f"voxbus-{r}", name]
        assert pod["volumes"][0]["secret"]["secretName"] == f"voxbus-tools-{r}"
        # longer than the worker's drain (20 s), as the stages'
        assert pod["terminationGracePeriodSeconds"] >= 30
        assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "tools"
        assert configs[name]["data"] == {"SHOP_API": "http://shop", "SHOP_TIMEOUT_S": "5"}
        so = scaled[name]
        jsonschema.validate(so, schema)
        assert not list(_unknown_fields(so, schema))
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert so["spec"]["minReplicaCount"] == 3
        consumers = {(t["metadata"]["stream"], t["metadata"]["consumer"])
                     for t in so["spec"]["triggers"]}
        assert consumers == {(streams.control_stream(r), f"tools-p{p}") for p in range(16)}
        # the other stages' images are the chart's own
        stt = deployments[f"voxbus-stt-{r}"]["spec"]["template"]["spec"]["containers"][0]
        assert stt["image"] == "ghcr.io/voxbus/voxbus:0.1.0"


@pytest.mark.fast
def test_tools_without_keda_and_the_modules_refused() -> None:
    docs = render(["eu"], *SHOP, "keda.enabled=false")
    assert _of(docs, "Deployment")["voxbus-tools-shop-eu"]["spec"]["replicas"] == 2
    assert not _of(docs, "ScaledObject")
    refused = {
        "a second module (they would share the tools-p<n> consumers)":
            (*SHOP, "tools.modules[1].name=crm", "tools.modules[1].module=crm.tools"),
        "no module": ("tools.modules[0].name=shop",),
        "a name that cannot name a Deployment": ("tools.modules[0].name=Shop_Tools",
                                                 "tools.modules[0].module=shop.tools"),
        "no replica kept (a call would wait for a pod)": (*SHOP, "tools.modules[0].replicas=0"),
    }
    for why, sets in refused.items():
        out = _helm(["eu"], *sets)
        assert out.returncode != 0 and "tools.modules" in out.stderr, (why, out.stderr)


@pytest.mark.fast
def test_the_gpu_switch_and_keda_off() -> None:
    docs = render(["eu"], "stages.stt.gpu=true", "keda.enabled=false")
    stt = _of(docs, "Deployment")["voxbus-stt-eu"]["spec"]
    assert stt["replicas"] == 1 and not _of(docs, "ScaledObject")
    pod = stt["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"]
    assert _of(docs, "ConfigMap")["voxbus-stt-eu"]["data"]["STT_DEVICE"] == "cuda"
    for d in docs:
        kubernetes_validate.validate(d, KUBERNETES, strict=True)


class _Inputs:
    """A stage's name and inputs, as the real stage class declares them (no model)."""

    def __init__(self, cls: type[Any]) -> None:
        self.name = cls.name
        self.inputs: tuple[Kind, ...] = cls.inputs
        self.urgent: tuple[Kind, ...] = cls.urgent
        self.policy = SessionPolicy()


async def test_each_scaledobject_reads_a_consumer_that_exists(tmp_path: Path) -> None:
    """The stages' consumers made on a real server as the workers make them; KEDA's reading of
    the monitoring endpoint (``/jsz?acc=$G&consumers=true&config=true``) has every consumer and
    stream the chart names, and the scaling formula sums every trigger."""
    regions = ["eu", "us"]
    docs = render(regions, *SHOP)
    server = EmbeddedNats(http_port=free_port()).start()
    try:
        for r in regions:
            bus = await Bus.connect(server.url, regions=[r], name=f"chart-{r}")
            await bus.provision()
            for cls in (*STAGES.values(), ToolsStage):
                await Worker(bus, _Inputs(cls)).ensure_consumers(r)  # type: ignore[arg-type]
            await bus.close()
        url = f"http://127.0.0.1:{server.http_port}/jsz?acc=$G&consumers=true&config=true"
        jsz = await asyncio.to_thread(_get_json, url)
    finally:
        server.stop()
    (acc,) = [a for a in jsz["account_details"] if a["name"] == "$G"]
    have = {(s["name"], c["name"]) for s in acc["stream_detail"]
            for c in s.get("consumer_detail", [])}
    scaled = _of(docs, "ScaledObject")
    assert {so["metadata"]["labels"]["app.kubernetes.io/component"]
            for so in scaled.values()} == {*STAGES, "tools"}
    for name, so in scaled.items():
        triggers = so["spec"]["triggers"]
        wanted = {(t["metadata"]["stream"], t["metadata"]["consumer"]) for t in triggers}
        assert wanted <= have, (name, sorted(wanted - have)[:5])
        labels = so["metadata"]["labels"]
        stage, region = labels["app.kubernetes.io/component"], labels["voxbus.dev/region"]
        made = {(s, c) for s, c in have if c.startswith(f"{stage}-p")
                and s.startswith(f"VOXBUS_{region.upper()}_")}
        assert wanted == made, f"{name}: the chart reads {len(wanted)} of {len(made)} consumers"
        formula = so["spec"]["advanced"]["scalingModifiers"]["formula"]
        assert sorted(formula.split(" + ")) == sorted(t["name"] for t in triggers)
    assert streams.audio_stream("eu") == "VOXBUS_EU_AUDIO"


@pytest.mark.parametrize("region", ["eu", "us"])
def test_nats_values_make_a_server_config_nats_server_accepts(region: str,
                                                              tmp_path: Path) -> None:
    committed = (ROOT / "deploy" / "nats" / f"values-{region}.yaml").read_text()
    values = nats_values(region, ["eu", "us"])
    assert yaml.safe_load(committed) == values, "deploy/nats is out of date: regenerate it"
    assert to_yaml(values) in committed
    gateways = values["config"]["gateway"]["merge"]["gateways"]
    assert [g["name"] for g in gateways] == [r for r in ("eu", "us") if r != region]
    assert values["config"]["merge"]["server_tags"] == [streams.region_tag(region)]
    conf = tmp_path / "nats.conf"
    conf.write_text(server_config_of(values, tmp_path / "js"))
    out = subprocess.run([str(nats_server_binary()), "-c", str(conf), "-t"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
