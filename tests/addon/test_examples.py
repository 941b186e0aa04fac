"""The examples for installations without Kubernetes (examples/compose, examples/systemd)
and the release workflow, checked without a Docker engine or systemd: parsed, every file
they reference exists, every DKN_AUTH_* / dkn_auth_* they set is a setting the sidecar
(its --help, config.rs) or the addon (client/config.py) reads, the addresses agree, and the
real sidecar accepts the compose odoo.conf."""

import configparser
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port, sidecar_bin
from dkn_auth.client.config import load_settings, url_of_listen

COMPOSE_DIR = ROOT / "examples" / "compose"
SYSTEMD_DIR = ROOT / "examples" / "systemd"
RELEASE = ROOT / ".github" / "workflows" / "release.yml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("DKN_AUTH_"):
            monkeypatch.delenv(key)


def sidecar_variables():
    """Every DKN_AUTH_* variable the sidecar reads, from its own --help."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
    out = subprocess.run(
        [str(sidecar_bin()), "--help"], capture_output=True, text=True, check=True, env=env
    ).stdout
    names = set(re.findall(r"\[env: (DKN_AUTH_[A-Z0-9_]+)", out))
    assert len(names) > 15, out
    return names


def sidecar_file_only_keys():
    """odoo.conf keys the sidecar reads that have no variable (config.rs)."""
    text = (ROOT / "sidecar" / "src" / "config.rs").read_text()
    return set(re.findall(r'odoo_value\(file, "(dkn_auth_[a-z0-9_]+)"\)', text))


def addon_variables():
    text = (ROOT / "addons" / "dkn_auth" / "client" / "config.py").read_text()
    names = set(re.findall(r'_find\("(DKN_AUTH_[A-Z0-9_]+)"', text))
    assert {"DKN_AUTH_URL", "DKN_AUTH_SOCKET", "DKN_AUTH_EXPIRY", "DKN_AUTH_LISTEN"} <= names
    return names


def known_keys():
    variables = sidecar_variables() | addon_variables()
    return variables, {v.lower() for v in variables} | sidecar_file_only_keys()


def compose():
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def odoo_conf(path):
    parser = configparser.RawConfigParser()
    parser.read([str(path)])
    return dict(parser.items("options"))


class OdooConfig:
    def __init__(self, path):
        self.rcfile = str(path)
        self.options = {
            k: (False if v in ("False", "false") else True if v in ("True", "true") else v)
            for k, v in odoo_conf(path).items()
        }

    def get(self, key, default=None):
        return self.options.get(key, default)


def host_path(source):
    """A bind mount's or build context's path on the host, relative to the compose file."""
    return (COMPOSE_DIR / source).resolve()


def bind_mounts(service):
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if source.startswith((".", "/")):
            target = rest.split(":", 1)[0]
            yield host_path(source), target


def test_compose_services_and_referenced_files():
    c = compose()
    services = c["services"]
    assert {"db", "redis", "odoo1", "odoo2", "sidecar1", "sidecar2", "proxy"} <= set(services)
    assert services["db"]["image"].split(":")[0].endswith("postgres")
    assert services["redis"]["image"].split(":")[0].endswith("redis")
    named = set(c.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert host_path(source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
        build = service.get("build")
        if build:
            context = host_path(build["context"])
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for env_file in service.get("env_file", []) or []:
            assert host_path(env_file).is_file(), f"{name}: {env_file}"
        for dep in service.get("depends_on", []) or []:
            assert dep in services, f"{name} depends on unknown {dep}"


def test_each_odoo_has_its_own_sidecar_in_its_network_namespace():
    services = compose()["services"]
    odoos = sorted(n for n, s in services.items() if s.get("image", "").split("/")[-1].startswith("odoo:"))
    sidecars = {n: s for n, s in services.items() if "odoo-session-sidecar" in s.get("image", "")}
    assert odoos == ["odoo1", "odoo2"]
    joined = sorted(s["network_mode"] for s in sidecars.values())
    assert joined == ["service:odoo1", "service:odoo2"], "one sidecar per Odoo, on its loopback"
    for name, s in sidecars.items():
        assert "ports" not in s, f"{name} must stay on loopback"
        assert s.get("read_only") is True and s.get("user"), name


def test_one_odoo_conf_for_odoo_and_sidecars():
    services = compose()["services"]
    conf = COMPOSE_DIR / "odoo.conf"
    for name in ("odoo1", "odoo2"):
        mounts = dict((t, h) for h, t in bind_mounts(services[name]))
        assert mounts["/etc/odoo/odoo.conf"] == conf
        assert mounts["/mnt/extra-addons/dkn_auth"] == ROOT / "addons" / "dkn_auth"
    for name in ("sidecar1", "sidecar2"):
        s = services[name]
        command = s["command"]
        path = command[command.index("--config") + 1]
        mounts = dict((t, h) for h, t in bind_mounts(s))
        assert mounts[path] == conf, f"{name} reads the same odoo.conf as Odoo"
    options = odoo_conf(conf)
    assert "dkn_auth" in options["server_wide_modules"].split(",")
    assert options["addons_path"] == "/mnt/extra-addons"


def test_every_dkn_auth_setting_is_real():
    variables, keys = known_keys()
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        for var in env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]:
            if var.startswith("DKN_AUTH_"):
                assert var in variables, f"{name}: {var} is not a setting"
    for path in (COMPOSE_DIR / "odoo.conf", ROOT / "examples" / "odoo-image" / "odoo.conf"):
        for line in path.read_text().splitlines():
            m = re.match(r"^\s*;?\s*(dkn_auth_[a-z0-9_]+)\s*=", line)
            if m:
                assert m.group(1) in keys, f"{path.name}: {m.group(1)} is not a setting"
    for line in (SYSTEMD_DIR / "session-sidecar.env.example").read_text().splitlines():
        m = re.match(r"^#?(DKN_AUTH_[A-Z0-9_]+)=", line)
        if m:
            assert m.group(1) in variables, m.group(1)


def test_the_addon_and_the_sidecar_meet_at_one_address():
    services = compose()["services"]
    options = odoo_conf(COMPOSE_DIR / "odoo.conf")
    sidecar_env = services["sidecar1"].get("environment") or {}
    listen = sidecar_env.get("DKN_AUTH_LISTEN") or options.get("dkn_auth_listen") or "127.0.0.1:7070"
    settings = load_settings(OdooConfig(COMPOSE_DIR / "odoo.conf"))
    assert settings.url == url_of_listen(listen)
    assert settings.url.startswith("http://127.0.0.1:"), "loopback: the shared network namespace"
    assert not settings.socket
    # The backend hosts are compose services.
    assert options["dkn_auth_redis_uri"].split("//", 1)[1].split(":", 1)[0] in services
    assert options["db_host"] in services


def test_the_proxy_spreads_over_both_replicas():
    text = (COMPOSE_DIR / "nginx.conf").read_text()
    upstream = re.search(r"upstream odoo \{(.*?)\}", text, re.S).group(1)
    servers = re.findall(r"server (\S+);", upstream)
    assert servers == ["odoo1:8069", "odoo2:8069"]
    assert "ip_hash" not in upstream and "sticky" not in upstream, "no stickiness: sessions are shared"
    proxy = compose()["services"]["proxy"]
    assert any(t == "/etc/nginx/conf.d/default.conf" for _, t in bind_mounts(proxy))
    assert "proxy_mode = True" in (COMPOSE_DIR / "odoo.conf").read_text()


def test_the_real_sidecar_accepts_the_compose_odoo_conf(tmp_path):
    # Its listen address and redis host only exist inside compose: another port here; the
    # Redis name does not resolve, and the sidecar serves all the same (readiness does not
    # follow the backend).
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DKN_AUTH_")}
    log = open(tmp_path / "sidecar.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(sidecar_bin()), "--config", str(COMPOSE_DIR / "odoo.conf"), "--listen", f"127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "sidecar.log").read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert 'driver="redis"' in (tmp_path / "sidecar.log").read_text()


def unit(path):
    """A systemd unit as {section: [(key, value)]} (keys repeat)."""
    sections, current = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_is_hardened_and_ordered_before_odoo():
    u = unit(SYSTEMD_DIR / "odoo-session-sidecar.service")
    service = dict(u["Service"])
    keys = [k for k, _ in u["Service"]]
    assert service["ExecStart"].split()[:3] == [
        "/usr/local/bin/odoo-session-sidecar",
        "--config",
        "/etc/odoo/odoo.conf",
    ]
    assert service.get("DynamicUser") == "yes" or service.get("User")
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/odoo/session-sidecar.env"
    assert "CapabilityBoundingSet" in keys and service["CapabilityBoundingSet"] == ""
    assert "odoo.service" in dict(u["Unit"])["Before"].split()
    assert dict(u["Install"])["WantedBy"] == "multi-user.target"
    drop_in = unit(SYSTEMD_DIR / "odoo.service.d" / "dkn-auth-sidecar.conf")
    odoo = dict(drop_in["Unit"])
    assert odoo["After"] == "odoo-session-sidecar.service"
    assert odoo["Wants"] == "odoo-session-sidecar.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    unit_file = tmp_path / "odoo-session-sidecar.service"
    unit_file.write_text(
        (SYSTEMD_DIR / "odoo-session-sidecar.service")
        .read_text()
        .replace("/usr/local/bin/odoo-session-sidecar", str(sidecar_bin()))
    )
    out = subprocess.run(["systemd-analyze", "verify", str(unit_file)], capture_output=True, text=True)
    # odoo.service (named in Before=) may not exist here; anything else is a problem.
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and "odoo.service" not in line.replace("sidecar.service", "")
    ]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_release_workflow():
    w = yaml.safe_load(RELEASE.read_text())
    jobs = w["jobs"]
    assert {"binaries", "wheels", "image", "publish"} <= set(jobs)
    targets = {m["target"] for m in jobs["binaries"]["strategy"]["matrix"]["include"]}
    assert targets == {"x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"}
    text = RELEASE.read_text()
    assert "packaging/wheel/build_wheel.py" in text
    image = next(s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push"))
    assert (ROOT / image["with"]["file"]).is_file()
    # Nothing is published from a manual run.
    assert jobs["publish"]["if"].startswith("startsWith(github.ref, 'refs/tags/v')")


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_release_workflow_scripts_pass_shellcheck(tmp_path):
    w = yaml.safe_load(RELEASE.read_text())
    n = 0
    for job in w["jobs"].values():
        for step in job["steps"]:
            if "run" not in step:
                continue
            script = re.sub(r"\$\{\{[^}]*\}\}", "x", step["run"])
            path = tmp_path / f"step{n}.sh"
            path.write_text("#!/bin/bash\nset -e\n" + script)
            n += 1
            out = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
            assert out.returncode == 0, f"{step.get('name')}:\n{out.stdout}"
    assert n >= 5


def test_docs_say_compose_cannot_run_here():
    text = (ROOT / "docs" / "install-without-kubernetes.md").read_text()
    assert "examples/compose" in text and "Docker engine" in text
    assert "examples/systemd/odoo-session-sidecar.service" in text
    assert "pip install odoo-session-sidecar" in text
    assert Path(ROOT / "packaging" / "wheel" / "build_wheel.py").is_file()
