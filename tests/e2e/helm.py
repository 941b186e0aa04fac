"""`helm install` / `helm uninstall` for machines without a helm binary, through Helm's
own Go library (PyPI helm-python-sdk). Used by tests/e2e/run-local.sh; the kind suite
runs the real `helm` with the same arguments.

    helm.py install RELEASE CHART --namespace NS [-f values.yaml]...
    helm.py upgrade RELEASE CHART --namespace NS [-f values.yaml]... [--wait]
    helm.py status RELEASE --namespace NS -o json     ({"info": {"status"}, "version"}, as helm's)
    helm.py uninstall RELEASE --namespace NS

Install and upgrade always wait for the release's objects to be ready (helm's --wait).

KUBECONFIG names the cluster.
"""

import argparse
import json
import os
import sys

import helm_python as helm
import yaml


def deep_merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def revision(release):
    # helm-python-sdk's release summary calls it `revision`; helm's JSON, `version`.
    return release.get("revision", release.get("version"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["install", "upgrade", "status", "uninstall"])
    parser.add_argument("release")
    parser.add_argument("chart", nargs="?")
    parser.add_argument("--namespace", "-n", required=True)
    parser.add_argument("--values", "-f", action="append", default=[])
    parser.add_argument("--timeout", type=int, default=300)
    # Accepted for the same command line as helm's: this tool always waits, prints JSON.
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--output", "-o", choices=["json"])
    args = parser.parse_args()
    cfg = helm.Config(kubeconfig_path=os.environ.get("KUBECONFIG"), namespace=args.namespace)
    try:
        values = {}
        for path in args.values:
            with open(path) as fh:
                deep_merge(values, yaml.safe_load(fh) or {})
        if args.action == "upgrade":
            # The given values replace the release's (helm upgrade without --reuse-values).
            release = cfg.upgrade(
                helm.Chart.load(args.chart),
                args.release,
                values,
                namespace=args.namespace,
                timeout=args.timeout,
                wait="watcher",
            )
            status = release.get("status") if isinstance(release, dict) else None
            print(f"upgraded {args.release} in {args.namespace}: {status}, revision {revision(release)}")
        elif args.action == "status":
            release = cfg.status(args.release)
            print(json.dumps({"info": {"status": release.get("status")}, "version": revision(release)}))
        elif args.action == "install":
            release = cfg.install(
                helm.Chart.load(args.chart),
                args.release,
                values,
                namespace=args.namespace,
                create_namespace=True,
                timeout=args.timeout,
                wait="watcher",
            )
            status = release.get("status") if isinstance(release, dict) else None
            print(f"installed {args.release} in {args.namespace}: {status}")
        else:
            cfg.uninstall(args.release, timeout=args.timeout, wait="watcher")
            print(f"uninstalled {args.release}")
    except helm.HelmError as err:
        sys.exit(f"helm {args.action} failed: {err}")


if __name__ == "__main__":
    main()
