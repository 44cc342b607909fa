"""The `frugalserve` command: `crds`, `validate`, `render` (cluster-free views of what the
operator would do), `operator` (runs it) and the subcommands of local mode. Each subcommand is
a thin function over the library; errors go to stderr with exit code 1."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from frugalserve.api import ManifestError, Manifests, load_manifests
from frugalserve.api.crds import crds, to_yaml
from frugalserve.operator.render import FallbackError, RenderSettings, fallback_chain, render
from frugalserve.pricing.cost import CostCeilingError
from frugalserve.serving.config import TenantConfig, hash_key, tenant_config


class CliError(Exception):
    """A problem reported to the user as lines on stderr, exit code 1."""


def tenant_configs(manifests: Manifests) -> list[TenantConfig]:
    """Tenants with their keys hashed from the Secrets of the same files."""
    out, errors = [], []
    for tenant in manifests.tenants:
        key = manifests.api_key(tenant)
        if key is None:
            ref = tenant.spec.api_key_secret_ref
            errors.append(
                f"Tenant/{tenant.metadata.name}: spec.apiKeySecretRef: no key {ref.key!r} in "
                f"Secret {tenant.metadata.namespace}/{ref.name} of the given files"
            )
            continue
        out.append(tenant_config(tenant, hash_key(key)))
    if errors:
        raise CliError("\n".join(errors))
    return out


def cmd_crds(args: argparse.Namespace) -> None:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in crds().items():
        (out / name).write_text(to_yaml(crd))
        print(out / name)


def cmd_validate(args: argparse.Namespace) -> None:
    manifests = load_manifests(*args.filename)
    by_name = {md.metadata.name: md for md in manifests.models}
    for md in manifests.models:
        fallback = md.spec.fallback
        if fallback is not None and fallback not in by_name:
            print(f"note: ModelDeployment/{md.metadata.name}: spec.fallback {fallback!r} is not in "
                  "the given files; its chain is checked by the operator", file=sys.stderr)
            continue
        render(md, RenderSettings(), fallback_chain(md, by_name))
    print(f"valid: {len(manifests.models)} ModelDeployment(s), {len(manifests.tenants)} Tenant(s)")


def cmd_render(args: argparse.Namespace) -> None:
    manifests = load_manifests(*args.filename)
    settings = RenderSettings(
        **{k: v for k, v in {"image": args.image, "ledger_url": args.ledger_url}.items() if v}
    )
    tenants = tenant_configs(manifests)
    by_name = {md.metadata.name: md for md in manifests.models}
    docs = [
        to_yaml(render(md, settings, fallback_chain(md, by_name), tenants))
        for md in sorted(manifests.models, key=lambda m: m.metadata.name)
    ]
    sys.stdout.write("---\n" + "---\n".join(docs))


def cmd_operator(args: argparse.Namespace) -> None:
    from frugalserve.operator.run import run
    from frugalserve.operator.settings import OperatorSettings

    flags = {
        "namespaces": ",".join(args.namespace) if args.namespace else None,
        "ledger_url": args.ledger_url,
        "serving_ledger_url": args.serving_ledger_url,
        "prometheus_url": args.prometheus_url,
        "gpu_prices": args.pricing,
        "image": args.image,
        "cost_interval_s": args.cost_interval,
        "tenant_interval_s": args.tenant_interval,
        "key_interval_s": args.key_interval,
    }
    try:
        settings = OperatorSettings.from_env(os.environ, flags)
    except (ValidationError, OSError, ValueError) as exc:
        raise CliError(f"operator settings: {exc}") from None
    run(settings, liveness_endpoint=args.liveness)


def cmd_serve(args: argparse.Namespace) -> None:
    from frugalserve.serving.local import serve_forever

    serve_forever(args.filename, Path(args.state_dir).expanduser(), host=args.host,
                  port=args.port)


def cmd_usage(args: argparse.Namespace) -> None:
    import json

    from frugalserve.serving.local import usage_rows, usage_table

    try:
        rows = usage_rows(Path(args.state_dir).expanduser())
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(rows, indent=2) if args.json else usage_table(rows))


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    from frugalserve.serving.local import DEFAULT_STATE_DIR

    parser.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                        help=f"Ledger and generated keys (default: {DEFAULT_STATE_DIR}).")


def _add_filename(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f", "--filename", action="append", required=True, help="Manifest file (repeatable)."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frugalserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    crds_p = sub.add_parser("crds", help="Write the CRDs generated from the API models.")
    crds_p.add_argument("-o", "--output", default="crds", help="Directory (default: crds).")
    crds_p.set_defaults(func=cmd_crds)
    validate_p = sub.add_parser("validate", help="Check manifests; print every error.")
    _add_filename(validate_p)
    validate_p.set_defaults(func=cmd_validate)
    render_p = sub.add_parser("render", help="Print the RayService YAML of each ModelDeployment.")
    _add_filename(render_p)
    render_p.add_argument("--image", help="Serving image (default: the operator's).")
    render_p.add_argument("--ledger-url", help="Ledger URL written into the Serve config.")
    render_p.set_defaults(func=cmd_render)
    op_p = sub.add_parser(
        "operator", help="Run the Kubernetes operator (kopf); FRUGALSERVE_* env vars or flags.")
    op_p.add_argument("-n", "--namespace", action="append",
                      help="Namespace to watch (repeatable; default: the whole cluster).")
    op_p.add_argument("--ledger-url", help="Ledger the operator reads usage from.")
    op_p.add_argument("--serving-ledger-url", help="Ledger URL written into Serve configs.")
    op_p.add_argument("--prometheus-url", help="Prometheus base URL (else scrape gateways).")
    op_p.add_argument("--pricing", help="GPU price table: JSON object or a JSON file path.")
    op_p.add_argument("--image", help="Default serving image.")
    op_p.add_argument("--cost-interval", type=float, help="Seconds between live cost updates.")
    op_p.add_argument("--tenant-interval", type=float, help="Seconds between Tenant updates.")
    op_p.add_argument("--key-interval", type=float,
                      help="Seconds between reads of Tenants' API key Secrets (rotation).")
    op_p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                      help="kopf's liveness endpoint (default: http://0.0.0.0:8080/healthz).")
    op_p.set_defaults(func=cmd_operator)
    serve_p = sub.add_parser("serve", help="Local mode: serve the manifests on a local Ray.")
    _add_filename(serve_p)
    _add_state_dir(serve_p)
    serve_p.add_argument("--host", default="127.0.0.1", help="Bind address (default: 127.0.0.1).")
    serve_p.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000).")
    serve_p.set_defaults(func=cmd_serve)
    usage_p = sub.add_parser("usage", help="Each local tenant's spend, tokens and budget left.")
    _add_state_dir(usage_p)
    usage_p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    usage_p.set_defaults(func=cmd_usage)
    return parser


USER_ERRORS = (ManifestError, CliError, FallbackError, CostCeilingError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
