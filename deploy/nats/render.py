"""Render the NATS server configuration from the event contract.

Permissions are derived from ``shared.contract.subjects.SERVICE_ACCESS`` so that they
cannot drift from what the services actually publish, consume and serve. Run

    python -m deploy.nats.render            # rewrite the committed files
    python -m deploy.nats.render --check    # exit 1 when a committed file is stale
    python -m deploy.nats.render --stdout --single-node

Outputs (both committed, both checked by tests/deploy/test_nats_render.py):

- ``deploy/nats/nats-server.conf``: the 3-node JetStream cluster used by deploy/compose.yaml
- ``k8s/nats/nats-accounts.conf``: the ``accounts`` block alone, for the official Helm chart
  (k8s/nats/ turns it into a ConfigMap; k8s/nats-values.yaml mounts and includes it)

No secret is ever rendered into a file: every password is a NATS config variable such as
``$GRIDCASE_NATS_ROUTING_PASSWORD`` that nats-server resolves from its environment at start
(and refuses to start when it is missing).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python deploy/nats/render.py` from anywhere
    sys.path.insert(0, str(ROOT))

from shared.contract.subjects import (  # noqa: E402
    INTAKE_REPORT,
    INTAKE_SUBMIT,
    SERVICE_ACCESS,
    STREAMS,
    ServiceAccess,
    stream_for,
)

ACCOUNT = "GRIDCASE"
SYSTEM_ACCOUNT = "SYS"
CONF_PATH = ROOT / "deploy" / "nats" / "nats-server.conf"
K8S_ACCOUNTS_PATH = ROOT / "k8s" / "nats" / "nats-accounts.conf"

ADVISORIES = (
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
)
# Read-only JetStream API for the operators' monitoring user (no payloads, no changes).
MONITOR_API = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.API.CONSUMER.INFO.*.*",
)
PLATFORM_USER = "platform"
MONITOR_USER = "monitor"
ADMIN_USER = "admin"
SYS_USER = "sys"


def password_var(user: str) -> str:
    """The NATS config variable (resolved from the environment) holding ``user``'s password."""
    return f"$GRIDCASE_NATS_{user.upper()}_PASSWORD"


def users() -> tuple[str, ...]:
    """Every user of the GRIDCASE account, then the system account's user."""
    return (*SERVICE_ACCESS, PLATFORM_USER, MONITOR_USER, ADMIN_USER, SYS_USER)


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def service_permissions(access: ServiceAccess) -> Permissions:
    """What one service's NATS user may do, derived from its contract entry. A replicated
    read model may use the unsuffixed durables (one instance: compose, dev) and those of each
    declared instance (k8s)."""
    durables = (*access.durables, *access.instance_durables)
    consumed_streams = _unique(stream for stream, _ in durables)
    published_streams = _unique(stream_for(s).name for s in access.publishes)
    js_api = ["$JS.API.INFO", "$JS.API.STREAM.NAMES"]
    for stream in _unique((*published_streams, *consumed_streams)):
        js_api.append(f"$JS.API.STREAM.INFO.{stream}")
    for stream in consumed_streams:
        # read one message by sequence: copy an exhausted message into the DLQ
        js_api.append(f"$JS.API.STREAM.MSG.GET.{stream}")
    for stream, durable in durables:
        js_api += [
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        ]
    acks = []
    for stream, durable in durables:
        acks += [f"$JS.ACK.{stream}.{durable}.>", f"$JS.ACK.*.*.{stream}.{durable}.>"]
    publish = _unique((*access.publishes, "gridcase.dlq.>", *js_api, *acks))
    subscribe = _unique((*access.consumes, *access.serves, *access.listens, "_INBOX.>", *ADVISORIES))
    # Command replies go to the requester's inbox: allow_responses permits exactly one
    # reply to each request this user received, instead of publishing to any `_INBOX.>`.
    return Permissions(publish, subscribe, allow_responses=bool(access.serves))


def platform_permissions() -> Permissions:
    """City platforms: submit reports (JetStream publish or the submit command), nothing else."""
    return Permissions(
        publish=(INTAKE_REPORT, INTAKE_SUBMIT),
        subscribe=("_INBOX.>",),  # publish acks and command replies
    )


def monitor_permissions() -> Permissions:
    """Operators' read-only view: stream/consumer state and advisories, no payloads."""
    return Permissions(publish=MONITOR_API, subscribe=("_INBOX.>", "$JS.EVENT.>"))


def all_permissions() -> dict[str, Permissions]:
    perms = {name: service_permissions(access) for name, access in SERVICE_ACCESS.items()}
    perms[PLATFORM_USER] = platform_permissions()
    perms[MONITOR_USER] = monitor_permissions()
    return perms


# ---- rendering -----------------------------------------------------------------------


def _q(subject: str) -> str:
    return f'"{subject}"'


def _list(items: Iterable[str], indent: str) -> str:
    items = list(items)
    inner = "".join(f"{indent}  {_q(i)}\n" for i in items)
    return f"[\n{inner}{indent}]"


def _user_block(name: str, perms: Permissions | None, indent: str) -> str:
    pad = indent + "  "
    out = [f"{indent}{{\n", f"{pad}user: {name}\n", f"{pad}password: {password_var(name)}\n"]
    if perms is not None:
        out.append(f"{pad}permissions: {{\n")
        out.append(f"{pad}  publish: {{ allow: {_list(perms.publish, pad + '  ')} }}\n")
        out.append(f"{pad}  subscribe: {{ allow: {_list(perms.subscribe, pad + '  ')} }}\n")
        if perms.allow_responses:
            out.append(f'{pad}  allow_responses: {{ max: 1, expires: "2m" }}\n')
        out.append(f"{pad}}}\n")
    out.append(f"{indent}}}\n")
    return "".join(out)


def render_accounts(perms: Mapping[str, Permissions] | None = None) -> str:
    perms = dict(perms or all_permissions())
    lines = [
        "# One account for the whole system; one user per service, derived from",
        "# shared.contract.subjects.SERVICE_ACCESS (publishes / consumes / serves / durables).",
        "accounts {\n",
        f"  {ACCOUNT} {{\n",
        "    jetstream {\n",
        "      max_memory: 256MB\n",
        "      max_file: 20GB\n",
        f"      max_streams: {len(STREAMS) + 4}\n",
        "      max_consumers: 64\n",
        "    }\n",
        "    users: [\n",
    ]
    lines = [ln if ln.endswith("\n") else ln + "\n" for ln in lines]
    for name in SERVICE_ACCESS:
        lines.append(f"      # service {name}\n")
        lines.append(_user_block(name, perms[name], "      "))
    lines.append("      # city platforms: publish reports and call intake's submit command only\n")
    lines.append(_user_block(PLATFORM_USER, perms[PLATFORM_USER], "      "))
    lines.append("      # operators: read-only stream/consumer state and advisories\n")
    lines.append(_user_block(MONITOR_USER, perms[MONITOR_USER], "      "))
    lines.append("      # operations and the stream declarer (compose nats-init, NACK in k8s)\n")
    lines.append(_user_block(ADMIN_USER, None, "      "))
    lines.append("    ]\n  }\n")
    lines.append(f"  {SYSTEM_ACCOUNT} {{\n    users: [\n")
    lines.append(_user_block(SYS_USER, None, "      "))
    lines.append("    ]\n  }\n}\n")
    lines.append(f"system_account: {SYSTEM_ACCOUNT}\n")
    return "".join(lines)


HEADER = """\
# GENERATED by deploy/nats/render.py from shared/contract/subjects.py: do not edit.
# Re-render with `python -m deploy.nats.render`; tests/deploy fail when this file is stale.
# Passwords are config variables resolved from the environment (never committed).
"""

TLS_COMMENT = """\
# TLS for clients (enable in production; certificates from cert-manager or your PKI):
# tls {
#   cert_file: "/etc/nats/tls/server.crt"
#   key_file:  "/etc/nats/tls/server.key"
#   ca_file:   "/etc/nats/tls/ca.crt"
#   verify: false          # true for mutual TLS
#   timeout: 2
# }
"""

CLUSTER_TLS_COMMENT = """\
  # TLS between cluster routes:
  # tls {
  #   cert_file: "/etc/nats/tls/route.crt"
  #   key_file:  "/etc/nats/tls/route.key"
  #   ca_file:   "/etc/nats/tls/ca.crt"
  #   verify: true
  # }
"""


def render_server(
    *,
    cluster_nodes: int = 3,
    host: str = "0.0.0.0",
    port: int = 4222,
    http_port: int | None = 8222,
    store_dir: str = "/data/jetstream",
    server_name: str = "$NATS_SERVER_NAME",
    node_host: str = "nats-{n}",
) -> str:
    """The full server config. ``cluster_nodes=1`` renders a standalone server (tests)."""
    out = [HEADER, "\n"]
    out.append(f"server_name: {server_name}\n")
    out.append(f"listen: {host}:{port}\n")
    if http_port is not None:
        out.append(
            f"http: {host}:{http_port}  # monitoring: /varz /jsz /healthz (scraped by the NATS exporter)\n"
        )
    out.append("max_payload: 1MB\n")
    out.append("max_connections: 10000\n")
    out.append('ping_interval: "20s"\n')
    out.append('lame_duck_duration: "30s"\n')
    out.append('lame_duck_grace_period: "10s"\n\n')
    out.append(TLS_COMMENT + "\n")
    out.append("jetstream {\n")
    out.append(f'  store_dir: "{store_dir}"\n')
    out.append("  max_memory_store: 512MB\n")
    out.append("  max_file_store: 20GB\n")
    out.append('  sync_interval: "2m"\n')
    out.append("}\n\n")
    if cluster_nodes > 1:
        routes = ", ".join(
            f'"nats-route://{node_host.format(n=n)}:6222"' for n in range(1, cluster_nodes + 1)
        )
        out.append("cluster {\n")
        out.append("  name: gridcase\n")
        out.append(f"  listen: {host}:6222\n")
        out.append(f"  routes: [{routes}]\n")
        out.append(CLUSTER_TLS_COMMENT)
        out.append("}\n\n")
    out.append(render_accounts())
    return "".join(out)


def outputs() -> dict[Path, str]:
    return {CONF_PATH: render_server(), K8S_ACCOUNTS_PATH: HEADER + "\n" + render_accounts()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file is stale")
    parser.add_argument("--stdout", action="store_true", help="print the server config instead")
    parser.add_argument(
        "--single-node", action="store_true", help="with --stdout: no cluster block"
    )
    args = parser.parse_args(argv)
    if args.stdout:
        sys.stdout.write(render_server(cluster_nodes=1 if args.single_node else 3))
        return 0
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        for path in stale:
            print(
                f"stale: {path.relative_to(ROOT)} (run `python -m deploy.nats.render`)",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
