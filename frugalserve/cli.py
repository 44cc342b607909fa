"""The `frugalserve` command: `crds`, `validate`, `render` (cluster-free views of what the
operator would do) and the subcommands of local mode. Each subcommand is a thin function over
the library; errors go to stderr with exit code 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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
        ref = tenant.spec.api_key_secret_ref
        data = manifests.secrets.get((tenant.metadata.namespace, ref.name), {})
        if ref.key not in data:
            errors.append(
                f"Tenant/{tenant.metadata.name}: spec.apiKeySecretRef: no key {ref.key!r} in "
                f"Secret {tenant.metadata.namespace}/{ref.name} of the given files"
            )
            continue
        out.append(tenant_config(tenant, hash_key(data[ref.key])))
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
